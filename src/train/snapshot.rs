//! The trainer's state as it travels: typed counters (`Counters`), the gradient-health
//! detectors, and every tensor under one naming scheme (`names`). `Trainer::snapshot` and
//! `Trainer::restore` serve resume and rollback alike; the conversion to and from a checkpoint
//! (`crate::checkpoint` stores the trainer's record without reading it) is here, including the
//! reading of format version 1, whose counters were an untyped map. `load_generator` reads a
//! generator out of a checkpoint by the same names, for `sample`, `eval` and `ablate`.

use crate::checkpoint::{self, Meta, TensorMap};
use crate::config::Config;
use crate::health::HealthSnapshot;
use crate::model::Generator;
use crate::net::{Net, PerNet};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The run's counters: everything on the host that a resumed run needs besides tensors and
/// detectors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    /// Generator updates completed (the iteration).
    pub step: u64,
    /// Critic updates completed; also the number of data batches consumed.
    pub critic_step: u64,
    /// Updates applied (not skipped) per network: the optimizers' step counts.
    pub applied: PerNet<u64>,
    /// Updates skipped because some rank saw a non-finite gradient, both networks.
    pub skipped_updates: u64,
    /// Multiplies both learning rates; lowered by each rollback.
    pub lr_scale: f64,
}

impl Counters {
    /// A run's counters before its first update.
    pub fn start() -> Counters {
        Counters { step: 0, critic_step: 0, applied: PerNet::default(), skipped_updates: 0, lr_scale: 1.0 }
    }
}

/// Checkpoint tensor names: the one scheme for saving, loading, broadcasting and reading a
/// generator back.
pub mod names {
    use crate::model::Net;

    /// A network parameter: "generator.fc.weight", "critic.conv1.bias".
    pub fn param(net: Net, name: &str) -> String {
        format!("{}.{name}", net.as_str())
    }

    /// An optimizer moment: "optim.critic.exp_avg".
    pub fn moment(net: Net, moment: &str) -> String {
        format!("optim.{}.{moment}", net.as_str())
    }

    /// The historical average's "mean" or "count": "hist_avg.generator.mean".
    pub fn history(net: Net, part: &str) -> String {
        format!("hist_avg.{}.{part}", net.as_str())
    }

    /// The EMA of a parameter: "ema.generator.fc.weight".
    pub fn ema(net: Net, name: &str) -> String {
        format!("ema.{}.{name}", net.as_str())
    }

    /// The critic's spectral-norm vector of its i-th normalised weight.
    pub fn spectral_u(i: usize) -> String {
        format!("critic.spectral_u.{i}")
    }
}

/// The trainer's state, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub counters: Counters,
    /// The detectors; `None` from a checkpoint older than them (they then start afresh).
    pub health: PerNet<Option<HealthSnapshot>>,
    pub tensors: TensorMap,
}

/// Why the trainer returns to a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// A new process continues the snapshot's run: the detectors continue from it, and fault
    /// injection counts critic attempts from its critic step.
    Resume,
    /// The run goes back to it after non-finite updates: the live detectors (whose counts
    /// include the updates that caused it) and the count of critic attempts go on.
    Rollback,
}

/// The trainer's record in meta.json (format version 2).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainerRecord {
    counters: Counters,
    health: PerNet<Option<HealthSnapshot>>,
}

/// The trainer's fields of a format-version-1 meta.json (see `checkpoint`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordV1 {
    critic_step: u64,
    #[allow(dead_code)]
    seed: u64,
    #[serde(default)]
    extra: BTreeMap<String, f64>,
    #[serde(default)]
    health: BTreeMap<String, HealthSnapshot>,
}

impl Snapshot {
    /// The name of a tensor holding a non-finite value, if any.
    pub fn non_finite_tensor(&self) -> Option<&str> {
        self.tensors.iter().find(|(_, (_, v))| v.iter().any(|x| !x.is_finite())).map(|(k, _)| k.as_str())
    }

    /// Writes this snapshot of a run of `cfg` on `world_size` ranks as a checkpoint under `root`.
    pub fn save(&self, root: &Path, cfg: &Config, world_size: usize) -> Result<PathBuf> {
        let record = TrainerRecord { counters: self.counters, health: self.health.clone() };
        let meta = Meta {
            format_version: checkpoint::FORMAT_VERSION,
            step: self.counters.step,
            config_hash: cfg.trajectory_hash(),
            config: cfg.to_toml(),
            world_size,
            gandist_version: env!("CARGO_PKG_VERSION").into(),
            libtorch_version: crate::LIBTORCH_VERSION.into(),
            state_sha256: String::new(),
            trainer: serde_json::to_value(record)?,
        };
        checkpoint::save(root, meta, &self.tensors)
    }

    /// The snapshot in a loaded checkpoint, for a run of `cfg`: refused when the checkpoint
    /// was written by a configuration with another trajectory. The configurations are
    /// compared, not their hashes: a checkpoint written under the old keys (`optim.lr_d`, ...)
    /// resumes under their new ones.
    pub fn from_checkpoint(l: checkpoint::Loaded, cfg: &Config) -> Result<Snapshot> {
        let theirs = Config::from_embedded(&l.meta.config).with_context(|| format!("checkpoint {}: the configuration in its meta.json", l.dir.display()))?;
        let differences = theirs.trajectory_differences(cfg);
        if !differences.is_empty() {
            bail!(
                "checkpoint {} was written by a different configuration ({}; the checkpoint's value first): only train.iterations, logging, device, dist and metrics settings may change on resume",
                l.dir.display(),
                differences.join(", ")
            );
        }
        let record = trainer_record(&l.meta).with_context(|| format!("checkpoint {}: the trainer's record in meta.json", l.dir.display()))?;
        Ok(Snapshot { counters: record.counters, health: record.health, tensors: l.tensors })
    }

    /// The newest usable checkpoint under `root` (see `checkpoint::load_latest`) for a
    /// trainer of state `shapes` (`Trainer::state_shapes`) running `cfg`, or None when there is
    /// none.
    pub fn load_latest(root: &Path, shapes: &BTreeMap<String, Vec<usize>>, cfg: &Config) -> Result<Option<(PathBuf, Snapshot)>> {
        match checkpoint::load_latest(root, shapes)? {
            Some(l) => Ok(Some((l.dir.clone(), Snapshot::from_checkpoint(l, cfg)?))),
            None => Ok(None),
        }
    }

    /// The checkpoint in `dir` for a trainer of state `shapes` running `cfg`.
    pub fn load(dir: &Path, shapes: &BTreeMap<String, Vec<usize>>, cfg: &Config) -> Result<Snapshot> {
        Snapshot::from_checkpoint(checkpoint::load(dir, shapes)?, cfg)
    }
}

/// The configuration the newest checkpoint under `root` embeds, of those whose meta.json and
/// configuration read: the run's own, when no other is given. None without checkpoints; an
/// error naming each one's problem when none reads.
pub fn newest_embedded_config(root: &Path) -> Result<Option<Config>> {
    let all = checkpoint::list(root);
    let mut errors = Vec::new();
    for (_, dir) in &all {
        match checkpoint::read_meta(dir).and_then(|m| Config::from_embedded(&m.config).with_context(|| format!("the configuration in {}", dir.join("meta.json").display()))) {
            Ok(c) => return Ok(Some(c)),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if all.is_empty() {
        return Ok(None);
    }
    bail!("no usable checkpoint in {}:\n  {}", root.display(), errors.join("\n  "))
}

/// The trainer's record of a checkpoint, by its format version.
fn trainer_record(meta: &Meta) -> Result<TrainerRecord> {
    let record = match meta.format_version {
        1 => {
            let v1: RecordV1 = serde_json::from_value(meta.trainer.clone())?;
            let count = |k: &str| v1.extra.get(k).copied().unwrap_or(0.0) as u64;
            TrainerRecord {
                counters: Counters {
                    step: meta.step,
                    critic_step: v1.critic_step,
                    applied: PerNet { critic: count("opt_d_steps"), generator: count("opt_g_steps") },
                    skipped_updates: count("skipped_updates"),
                    lr_scale: v1.extra.get("lr_scale").copied().unwrap_or(1.0),
                },
                health: PerNet::from_fn(|net| v1.health.get(net.as_str()).cloned()),
            }
        }
        _ => serde_json::from_value(meta.trainer.clone())?,
    };
    if record.counters.step != meta.step {
        bail!("its counters say step {} but the checkpoint is of step {}", record.counters.step, meta.step);
    }
    Ok(record)
}

/// A generator restored from a checkpoint, with the configuration that trained it.
pub struct GeneratorCheckpoint {
    pub generator: Generator,
    /// The weights are the EMA generator's.
    pub ema: bool,
    pub config: Config,
    pub meta: Meta,
    pub dir: PathBuf,
}

/// Which generator weights to load from a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneratorWeights {
    /// The EMA weights when the run kept them, else the trained ones.
    Auto,
    /// The EMA weights; an error when the run kept none.
    Ema,
    /// The trained weights.
    Raw,
}

/// Loads the generator of the checkpoint at `path` (a checkpoint or run directory) onto
/// `device`, checking the state file like `checkpoint::load` does.
pub fn load_generator(path: &Path, weights: GeneratorWeights, device: tch::Device) -> Result<GeneratorCheckpoint> {
    let dir = checkpoint::resolve(path)?;
    let meta = checkpoint::read_meta(&dir)?;
    let config = Config::from_embedded(&meta.config).with_context(|| format!("the configuration embedded in {}", dir.join("meta.json").display()))?;
    let ema = match weights {
        GeneratorWeights::Ema if !config.ema.enabled() => {
            bail!("--weights ema: the run of {} kept no EMA (ema.half_life_steps and ema.half_life_images are 0)", dir.display())
        }
        GeneratorWeights::Ema | GeneratorWeights::Auto => config.ema.enabled(),
        GeneratorWeights::Raw => false,
    };
    let name = |n: &str| if ema { names::ema(Net::Generator, n) } else { names::param(Net::Generator, n) };
    let generator = Generator::from_config(&config, device)?;
    let params = &generator.params;
    let shapes = params.names.iter().zip(&params.shapes).map(|(n, s)| (name(n), s.iter().map(|&d| d as usize).collect())).collect();
    let loaded = checkpoint::load(&dir, &shapes)?;
    let flat: Vec<f32> = params.names.iter().flat_map(|n| loaded.tensors[&name(n)].1.clone()).collect();
    params.load_flat(&Tensor::from_slice(&flat).to_device(device));
    Ok(GeneratorCheckpoint { generator, ema, config, meta: loaded.meta, dir })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectives::Local;
    use crate::data::{DeviceImages, Mnist};
    use crate::train::Trainer;
    use std::rc::Rc;

    fn trainer(overrides: &[&str]) -> Trainer {
        let mut all = vec!["critic.width=2", "generator.width=2", "model.latent=4", "data.batch_size=8", "train.n_critic=2", "train.device=\"cpu\""];
        all.extend_from_slice(overrides);
        let cfg = Config::from_toml_str("", &all.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let n = 64;
        let m = Mnist { images: (0..n * 784).map(|i| (i * 7 % 256) as u8).collect(), labels: vec![0; n], n };
        Trainer::new(cfg, Rc::new(Local), tch::Device::Cpu, DeviceImages::from_mnist(&m, tch::Device::Cpu).unwrap()).unwrap()
    }

    /// Every technique with state, a skipped update, and detectors that class every finite
    /// update as vanishing (so that their counts move).
    const STATEFUL: [&str; 7] = [
        "ema.half_life_steps=2",
        "critic.hist_avg=1e-3",
        "generator.hist_avg=1e-3",
        "critic.spectral_norm=true",
        "faults.nan_critic_updates=[1]",
        "health.vanish_threshold=1e9",
        "health.vanish_patience=1",
    ];

    /// Every piece of state has a name in the scheme, and the names are those of format 1.
    #[test]
    fn state_names_cover_every_technique() {
        let t = trainer(&STATEFUL);
        let names: Vec<String> = t.state_shapes().into_keys().collect();
        for want in ["generator.fc.weight", "critic.conv1.bias", "optim.generator.exp_avg", "optim.critic.exp_avg_sq", "hist_avg.critic.mean", "hist_avg.generator.count", "ema.generator.deconv3.weight", "critic.spectral_u.3"] {
            assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.starts_with("ema.critic")), "{names:?}");
        // SGD keeps no moments.
        let sgd = trainer(&["critic.optimizer=sgd", "generator.optimizer=sgd"]);
        assert!(!sgd.state_shapes().keys().any(|n| n.starts_with("optim.")));
    }

    /// A snapshot restored into a fresh trainer (a resume) and one restored into the trainer
    /// that moved on (a rollback) both continue exactly like the trainer that took it; a
    /// rollback keeps the live detectors, a resume takes the snapshot's.
    #[test]
    fn restore_continues_exactly_for_resume_and_rollback() {
        let mut a = trainer(&STATEFUL);
        a.iteration().unwrap();
        a.iteration().unwrap();
        a.sync().unwrap();
        let snap = a.snapshot().unwrap();
        assert_eq!(snap.counters.skipped_updates, 1);
        assert_eq!((snap.counters.applied.critic, snap.counters.applied.generator, snap.counters.critic_step), (3, 2, 4));
        let mut resumed = trainer(&STATEFUL);
        resumed.restore(&snap, Restore::Resume).unwrap();
        assert_eq!(resumed.snapshot().unwrap(), snap);
        let mut rolled = trainer(&STATEFUL);
        for _ in 0..3 {
            rolled.iteration().unwrap();
        }
        rolled.sync().unwrap();
        let live = rolled.snapshot().unwrap().health.generator.unwrap().counts;
        assert_ne!(Some(live), snap.health.generator.as_ref().map(|h| h.counts));
        rolled.restore(&snap, Restore::Rollback).unwrap();
        assert_eq!(rolled.counters(), snap.counters);
        assert_eq!(rolled.snapshot().unwrap().health.generator.unwrap().counts, live, "a rollback keeps the live detectors");
        for t in [&mut a, &mut resumed, &mut rolled] {
            t.iteration().unwrap();
            t.sync().unwrap();
        }
        let (sa, sr, sb) = (a.snapshot().unwrap(), resumed.snapshot().unwrap(), rolled.snapshot().unwrap());
        assert_eq!(sa.tensors, sr.tensors, "resumed");
        assert_eq!(sa.tensors, sb.tensors, "rolled back");
        assert_eq!(sa.health, sr.health);
        assert_ne!(sa.health, sb.health);
    }

    /// Format 1's untyped counters map onto the typed ones; a checkpoint older than the
    /// detectors leaves them to start afresh; format 2's counters of another step are refused.
    #[test]
    fn format_1_records_map_onto_the_counters() {
        let mut meta = Meta {
            format_version: 1,
            step: 4,
            config_hash: String::new(),
            config: String::new(),
            world_size: 1,
            gandist_version: "0.1.0".into(),
            libtorch_version: "2.11.0".into(),
            state_sha256: String::new(),
            trainer: serde_json::json!({"critic_step": 8, "seed": 0, "extra": {"opt_d_steps": 7.0, "opt_g_steps": 4.0, "skipped_updates": 1.0, "lr_scale": 0.25}}),
        };
        let r = trainer_record(&meta).unwrap();
        let want = Counters { step: 4, critic_step: 8, applied: PerNet { critic: 7, generator: 4 }, skipped_updates: 1, lr_scale: 0.25 };
        assert_eq!(r.counters, want);
        assert_eq!(r.health, PerNet { critic: None, generator: None });
        // Format 2 keeps the step in both the header and the counters: they must agree.
        meta.format_version = 2;
        meta.trainer = serde_json::to_value(TrainerRecord { counters: want, health: r.health }).unwrap();
        assert_eq!(trainer_record(&meta).unwrap().counters, want);
        meta.step = 5;
        assert!(trainer_record(&meta).unwrap_err().to_string().contains("step 4 but the checkpoint is of step 5"));
    }

    /// Through the format: a checkpoint written by `save` loads into the same snapshot, and
    /// one of another trajectory is refused by name.
    #[test]
    fn checkpoints_round_trip_and_refuse_another_configuration() {
        let root = tempfile::tempdir().unwrap();
        let mut t = trainer(&STATEFUL);
        t.iteration().unwrap();
        t.sync().unwrap();
        let snap = t.snapshot().unwrap();
        let dir = snap.save(root.path(), t.config(), 1).unwrap();
        assert_eq!(Snapshot::load(&dir, &t.state_shapes(), t.config()).unwrap(), snap);
        let (latest, s) = Snapshot::load_latest(root.path(), &t.state_shapes(), t.config()).unwrap().unwrap();
        assert_eq!((latest, s), (dir.clone(), snap));
        let other = trainer(&[&STATEFUL[..], &["critic.lr=3e-4"]].concat());
        let e = format!("{:#}", Snapshot::load(&dir, &other.state_shapes(), other.config()).unwrap_err());
        assert!(e.contains("different configuration") && e.contains("critic.lr = 0.0001 vs 0.0003"), "{e}");
        // A checkpoint written under the old keys is the same configuration.
        let old_keys = Config::from_toml_str("", &["optim.lr_d=1e-4".into()]).unwrap();
        assert!(old_keys.trajectory_differences(&Config::default()).is_empty());
    }
}
