//! The run's scalar log, `metrics.jsonl` (one JSON object per logged step; the Prometheus
//! metrics are `crate::metrics`): its schema, every key that the trainer writes and that the
//! plots, the ablation report, the progress line and the metrics bridge read, and the file.
//!
//! A new loss term is one line in `loss_terms!` below (and its computation in the trainer):
//! the scalar log, Prometheus (`gandist_loss{net,term}`) and the loss plot follow the table.

use crate::model::Net;
use anyhow::{Context, Result};
use serde_json::{Map, Value};

/// The log's file name in the run directory.
pub const FILE_NAME: &str = "metrics.jsonl";

/// A loss term: its key in the scalar log (and in an update's scalars), its network, and
/// its `term` label in Prometheus. Logged unweighted; the total is the weighted sum.
#[derive(Debug, PartialEq, Eq)]
pub struct LossTerm {
    pub key: &'static str,
    pub net: Net,
    pub term: &'static str,
}

macro_rules! loss_terms {
    ($($name:ident = $key:literal, $net:ident, $term:literal;)*) => {
        $(pub const $name: LossTerm = LossTerm { key: $key, net: Net::$net, term: $term };)*
        /// Every loss term, in the order the plots list them.
        pub const LOSS_TERMS: &[LossTerm] = &[$($name),*];
    };
}

loss_terms! {
    D_LOSS = "d_loss", Critic, "total";
    D_ADV = "d_adv", Critic, "adversarial";
    D_GP = "d_gp", Critic, "gradient_penalty";
    G_LOSS = "g_loss", Generator, "total";
    D_L2 = "d_l2", Critic, "l2";
    D_HIST_AVG = "d_hist_avg", Critic, "historical_averaging";
    G_ADV = "g_adv", Generator, "adversarial";
    G_FM = "g_fm", Generator, "feature_matching";
    G_L2 = "g_l2", Generator, "l2";
    G_HIST_AVG = "g_hist_avg", Generator, "historical_averaging";
}

/// A network's total loss, and its parameter terms (added after the reduction).
pub fn total(net: Net) -> &'static LossTerm {
    match net {
        Net::Critic => &D_LOSS,
        Net::Generator => &G_LOSS,
    }
}

pub fn l2(net: Net) -> &'static LossTerm {
    match net {
        Net::Critic => &D_L2,
        Net::Generator => &G_L2,
    }
}

pub fn hist_avg(net: Net) -> &'static LossTerm {
    match net {
        Net::Critic => &D_HIST_AVG,
        Net::Generator => &G_HIST_AVG,
    }
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

// Sample quality at evaluation steps (with the rest of `eval::Report::to_json`).
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

/// A number in a record (None when absent or not a number).
pub fn number(record: &Map<String, Value>, key: &str) -> Option<f64> {
    record.get(key).and_then(Value::as_f64)
}
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// The open file, appended to.
pub struct ScalarLog {
    file: File,
}

impl ScalarLog {
    /// Appends to `path` (a resumed run continues the same log).
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open scalar log {}", path.display()))?;
        Ok(ScalarLog { file })
    }

    pub fn write(&mut self, record: &Map<String, Value>) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).context("cannot append to scalar log")
    }
}

/// Reads a scalar log back (for plots and tests); malformed lines are errors with their number.
pub fn read(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}: line {} is not a JSON object", path.display(), i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_terms_are_unique_and_snake_case() {
        for (i, a) in LOSS_TERMS.iter().enumerate() {
            assert!(a.term.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{}", a.term);
            assert!(a.key.starts_with(&format!("{}_", a.net.prefix())), "{} is not keyed by its network", a.key);
            for b in &LOSS_TERMS[i + 1..] {
                assert!(a.key != b.key && (a.net, a.term) != (b.net, b.term), "{} / {}", a.key, b.key);
            }
        }
        for net in Net::ALL {
            for t in [total(net), l2(net), hist_avg(net)] {
                assert_eq!(t.net, net, "{}", t.key);
                assert!(LOSS_TERMS.contains(t));
            }
        }
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

    #[test]
    fn records_round_trip_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = ScalarLog::open(&path).unwrap();
        let mut r = Map::new();
        r.insert(STEP.into(), 3.into());
        r.insert(D_LOSS.key.into(), 1.5.into());
        log.write(&r).unwrap();
        drop(log);
        // A resumed run appends to the same file.
        ScalarLog::open(&path).unwrap().write(&r).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back, vec![r.clone(), r]);
        assert_eq!(number(&back[0], D_LOSS.key), Some(1.5));
        assert_eq!(number(&back[0], G_LOSS.key), None);
        std::fs::write(&path, "{\"step\": 1}\nnot json\n").unwrap();
        let e = format!("{:#}", read(&path).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }
}
