//! The generator out of gandist: TorchScript, ONNX and safetensors files that give gandist's
//! own output for the same noise, each carrying the metadata a user needs to call it (latent
//! size, output range, channel layout, resolution, architecture, step, weights).
//!
//! - `graph`: the generator as a list of layers and weights, the one description every
//!   format is written from (and the one place that knows each architecture);
//! - `torchscript`: a libtorch trace of the graph, the metadata as an extra file in the archive;
//! - `onnx` (with `onnx_proto`, the ModelProto messages): the graph as ONNX operators;
//! - `weights`: a safetensors file that loads into `python/gandist_generator.py`.

pub mod graph;
pub mod onnx;
mod onnx_proto;
pub mod torchscript;
pub mod weights;

use crate::train::snapshot::GeneratorCheckpoint;
use anyhow::{bail, Result};
use graph::{Graph, Layer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TorchScript,
    Onnx,
    Safetensors,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::TorchScript => "torchscript",
            Format::Onnx => "onnx",
            Format::Safetensors => "safetensors",
        }
    }
}

/// The version of the metadata's schema; a reader refuses a newer one.
pub const METADATA_VERSION: u32 = 1;
/// The channel layout of the output (and of every image gandist writes).
pub const LAYOUT: &str = "NCHW";
/// The generator's output range (its last layer is tanh); pixels are (x + 1) * 127.5.
pub const OUTPUT_RANGE: [f64; 2] = [-1.0, 1.0];
/// What the generator expects as input: standard normal float32 noise of shape (N, latent).
pub const NOISE: &str = "standard normal";

/// What an exported file says about its generator. The same fields in every format: the
/// TorchScript archive's extra file `gandist.json` (a JSON object), ONNX's metadata_props
/// and the safetensors header's `__metadata__` (string maps: strings as they are, other
/// values as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub gandist_metadata_version: u32,
    pub gandist_version: String,
    /// `model.arch` of the run.
    pub arch: String,
    /// Noise width: the input is (N, latent).
    pub latent: i64,
    pub noise: String,
    pub channels: i64,
    pub height: i64,
    pub width: i64,
    pub layout: String,
    pub output_range: [f64; 2],
    /// The checkpoint's step.
    pub step: u64,
    /// "ema" or "raw".
    pub weights: String,
    /// The checkpoint directory it came from.
    pub checkpoint: String,
    /// The layers (graph::Layer), for python/gandist_generator.py.
    pub layers: Vec<Layer>,
}

impl Metadata {
    pub fn of(graph: &Graph, ck: &GeneratorCheckpoint) -> Metadata {
        Metadata::new(graph, ck.meta.step, ck.ema, ck.dir.display().to_string())
    }

    /// The metadata of `graph` taken at `step` from `checkpoint`, with EMA weights or not.
    pub fn new(graph: &Graph, step: u64, ema: bool, checkpoint: String) -> Metadata {
        let [channels, height, width] = graph.image;
        Metadata {
            gandist_metadata_version: METADATA_VERSION,
            gandist_version: env!("CARGO_PKG_VERSION").into(),
            arch: graph.arch.clone(),
            latent: graph.latent,
            noise: NOISE.into(),
            channels,
            height,
            width,
            layout: LAYOUT.into(),
            output_range: OUTPUT_RANGE,
            step,
            weights: if ema { "ema" } else { "raw" }.into(),
            checkpoint,
            layers: graph.layers.clone(),
        }
    }

    /// As a string map: strings as they are, every other value as JSON.
    pub fn to_string_map(&self) -> BTreeMap<String, String> {
        let value = serde_json::to_value(self).expect("metadata serialises");
        let obj = value.as_object().expect("metadata is an object");
        obj.iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }

    /// Reads `to_string_map`'s form back (for tests and tools).
    pub fn from_string_map(map: &BTreeMap<String, String>) -> Result<Metadata> {
        const STRINGS: [&str; 6] = ["gandist_version", "arch", "noise", "layout", "weights", "checkpoint"];
        let mut obj = serde_json::Map::new();
        for (k, v) in map {
            let value = match STRINGS.contains(&k.as_str()) {
                true => serde_json::Value::String(v.clone()),
                false => serde_json::from_str(v).map_err(|e| anyhow::anyhow!("metadata {k} = {v:?} is not JSON: {e}"))?,
            };
            obj.insert(k.clone(), value);
        }
        Ok(serde_json::from_value(serde_json::Value::Object(obj))?)
    }

    /// One line for the terminal: what a caller needs to know.
    pub fn summary(&self) -> String {
        format!(
            "latent {} ({} noise), output {} {}x{}x{} in [{}, {}], arch {}, step {}, {} weights",
            self.latent,
            self.noise,
            self.layout,
            self.channels,
            self.height,
            self.width,
            self.output_range[0],
            self.output_range[1],
            self.arch,
            self.step,
            self.weights
        )
    }
}

/// Writes the generator of `ck` to `out` in `format` (atomically: a temporary name, then a
/// rename); returns its metadata and a line about the format (its opset, where the metadata is).
pub fn export(ck: &GeneratorCheckpoint, format: Format, out: &Path) -> Result<(Metadata, String)> {
    if out.is_dir() {
        bail!("--out {} is a directory: expected a file name", out.display());
    }
    let graph = graph::of(&ck.generator);
    if let Err(e) = graph.check() {
        bail!("cannot export: {e}");
    }
    let meta = Metadata::of(&graph, ck);
    let about = match format {
        Format::TorchScript => torchscript::write(&graph, &meta, out)?,
        Format::Onnx => onnx::write(&graph, &meta, out)?,
        Format::Safetensors => weights::write(&graph, &meta, out)?,
    };
    Ok((meta, about))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata {
            gandist_metadata_version: METADATA_VERSION,
            gandist_version: "0.1.0".into(),
            arch: "paper".into(),
            latent: 16,
            noise: NOISE.into(),
            channels: 3,
            height: 28,
            width: 28,
            layout: LAYOUT.into(),
            output_range: OUTPUT_RANGE,
            step: 6,
            weights: "ema".into(),
            checkpoint: "runs/x/checkpoints/step-000000006".into(),
            layers: vec![Layer::Relu, Layer::Crop { height: 7, width: 7 }],
        }
    }

    #[test]
    fn the_string_map_keeps_strings_readable_and_round_trips() {
        let m = meta();
        let s = m.to_string_map();
        assert_eq!(s["layout"], "NCHW");
        assert_eq!(s["latent"], "16");
        assert_eq!(s["output_range"], "[-1.0,1.0]");
        assert_eq!(s["layers"], r#"[{"op":"relu"},{"height":7,"op":"crop","width":7}]"#);
        assert_eq!(Metadata::from_string_map(&s).unwrap(), m);
        assert!(m.summary().contains("latent 16") && m.summary().contains("NCHW 3x28x28 in [-1, 1]"), "{}", m.summary());
    }
}
