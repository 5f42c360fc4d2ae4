//! The run's scalar log, `metrics.jsonl`: one JSON object per logged step (a `StepRecord`'s
//! `to_json`) or event (a rollback), appended by rank 0, and read back for plots, the ablation
//! report and tests. The keys are `sink::record::keys`, re-exported here for the readers of
//! the file.

pub use crate::sink::record::keys::*;
use crate::sink::{Rollback, Sink, StepRecord};
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// The log's file name in the run directory.
pub const FILE_NAME: &str = "metrics.jsonl";

/// A number in a record (None when absent or not a number).
pub fn number(record: &Map<String, Value>, key: &str) -> Option<f64> {
    record.get(key).and_then(Value::as_f64)
}

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

impl Sink for ScalarLog {
    fn log(&mut self, record: &StepRecord) -> Result<()> {
        self.write(&record.to_json())
    }

    /// A rollback is an event record: its step (the one returned to), the word and the new scale.
    fn rollback(&mut self, r: &Rollback) -> Result<()> {
        let mut m = Map::new();
        m.insert(STEP.into(), json!(r.step));
        m.insert(EVENT.into(), json!(ROLLBACK));
        m.insert(LR_SCALE.into(), json!(r.lr_scale));
        self.write(&m)
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
    fn records_round_trip_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = ScalarLog::open(&path).unwrap();
        let mut r = Map::new();
        r.insert(STEP.into(), 3.into());
        r.insert(D_LOSS.key.into(), 1.5.into());
        log.write(&r).unwrap();
        log.rollback(&Rollback { step: 2, lr_scale: 0.5, streak: 20 }).unwrap();
        drop(log);
        // A resumed run appends to the same file.
        ScalarLog::open(&path).unwrap().write(&r).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back[0], r);
        assert_eq!(serde_json::Value::Object(back[1].clone()), json!({"step": 2, "event": "rollback", "lr_scale": 0.5}));
        assert_eq!(back[2], r);
        assert_eq!(number(&back[0], D_LOSS.key), Some(1.5));
        assert_eq!(number(&back[0], G_LOSS.key), None);
        std::fs::write(&path, "{\"step\": 1}\nnot json\n").unwrap();
        let e = format!("{:#}", read(&path).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
    }
}
