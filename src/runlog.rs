//! The run's scalar log: one JSON object per logged step in `metrics.jsonl`.

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

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
