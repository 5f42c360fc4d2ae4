//! The configuration keys that `[critic]` and `[generator]` replaced, kept working for a
//! release: each old key is moved to its new key(s) in the parsed TOML before the schema reads
//! it, and reported so that the user is told the new name. Checkpoints embed the configuration
//! that wrote them, so the same migration reads the old keys of an old checkpoint.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::fmt;

/// Each old key and the key(s) that hold its value now. A key shared by both networks before
/// (a width, Adam's betas) sets both.
pub const RENAMED: &[(&str, &[&str])] = &[
    ("model.dim", &["critic.width", "generator.width"]),
    ("model.spectral_norm", &["critic.spectral_norm"]),
    ("model.sn_power_iterations", &["critic.sn_power_iterations"]),
    ("optim.kind", &["critic.optimizer", "generator.optimizer"]),
    ("optim.lr_d", &["critic.lr"]),
    ("optim.lr_g", &["generator.lr"]),
    ("optim.beta1", &["critic.beta1", "generator.beta1"]),
    ("optim.beta2", &["critic.beta2", "generator.beta2"]),
    ("optim.eps", &["critic.eps", "generator.eps"]),
    ("clip.max_norm_d", &["critic.clip_norm"]),
    ("clip.max_norm_g", &["generator.clip_norm"]),
    ("clip.value_d", &["critic.clip_value"]),
    ("clip.value_g", &["generator.clip_value"]),
    ("regularize.l2_d", &["critic.l2"]),
    ("regularize.l2_g", &["generator.l2"]),
    ("regularize.hist_avg_d", &["critic.hist_avg"]),
    ("regularize.hist_avg_g", &["generator.hist_avg"]),
    ("regularize.weight_clip", &["critic.weight_clip"]),
    ("loss.gp_lambda", &["critic.penalty_weight"]),
    ("loss.penalty", &["critic.penalty"]),
    ("loss.penalty_every", &["critic.penalty_every"]),
    ("loss.label_smoothing", &["critic.label_smoothing"]),
    ("loss.feature_matching", &["generator.feature_matching"]),
    ("loss.g_adversarial", &["generator.adversarial"]),
];

/// Tables that held renamed keys only, and are gone.
const RETIRED_TABLES: [&str; 3] = ["optim", "clip", "regularize"];

/// An old key met in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    pub old: &'static str,
    pub new: &'static [&'static str],
}

impl fmt::Display for Renamed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key {} is deprecated and will be removed in the next release: use {}", self.old, self.new.join(" and "))
    }
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('.').expect("keys are table.key")
}

fn get<'a>(root: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    let (table, field) = split(key);
    root.get(table)?.get(field)
}

/// Moves every old key of `root` to its new key(s); an old key beside a new key it maps to is
/// an error (which one was meant?). Returns the old keys met.
pub fn migrate(root: &mut toml::Value) -> Result<Vec<Renamed>> {
    let mut met = Vec::new();
    for &(old, new) in RENAMED {
        let (table, field) = split(old);
        let Some(value) = root.get_mut(table).and_then(|t| t.as_table_mut()).and_then(|t| t.remove(field)) else {
            continue;
        };
        for key in new {
            if get(root, key).is_some() {
                bail!("{old} is the old name of {key}, and both are set: keep {key} only");
            }
        }
        for key in new {
            let (table, field) = split(key);
            let Some(t) = root.as_table_mut() else { bail!("the configuration is not a table") };
            let entry = t.entry(table.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
            match entry.as_table_mut() {
                Some(t) => t.insert(field.to_string(), value.clone()),
                None => bail!("{table} is not a table (it takes the keys {table}.lr, {table}.width, ...)"),
            };
        }
        met.push(Renamed { old, new });
    }
    if let Some(t) = root.as_table_mut() {
        for table in RETIRED_TABLES {
            match t.get(table).and_then(|v| v.as_table()) {
                Some(rest) if rest.is_empty() => {
                    t.remove(table);
                }
                Some(rest) => {
                    let key = rest.keys().next().expect("not empty");
                    bail!("unknown key {table}.{key}: the [{table}] table is gone, its keys moved to [critic] and [generator] (docs/configuration.md lists them)");
                }
                None => {}
            }
        }
    }
    Ok(met)
}

/// Names the old key behind a validation error about its new one, so that a user who typed
/// the old name recognises it.
pub fn explain(e: anyhow::Error, met: &[Renamed]) -> anyhow::Error {
    let text = format!("{e:#}");
    for r in met {
        if let Some(key) = r.new.iter().find(|k| text.contains(**k)) {
            return anyhow::anyhow!("{text} ({key} was given by its old name {})", r.old);
        }
    }
    e
}

/// Every leaf of `v` by its dotted key ("critic.lr"); arrays are leaves.
pub fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v.as_table() {
        Some(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        None => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}
