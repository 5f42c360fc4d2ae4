//! The safetensors export: the graph's weights under their layer names ("fc.weight",
//! "deconv1.bias", ...), float32, and the metadata in the header's `__metadata__`. The names
//! and shapes are those of the PyTorch modules that `python/gandist_generator.py` builds from
//! the metadata's `layers`, so `load_state_dict` takes the file as it is.

use super::graph::Graph;
use super::Metadata;
use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

pub fn write(graph: &Graph, meta: &Metadata, out: &Path) -> Result<String> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = graph
        .weights
        .iter()
        .map(|(name, t)| {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let values = crate::hostread::vec_f32(t)?;
            Ok((name.clone(), shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        })
        .collect::<Result<_, tch::TchError>>()?;
    let views: Vec<(&str, TensorView)> = data
        .iter()
        .map(|(name, shape, bytes)| TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.as_str(), v)))
        .collect::<Result<_, _>>()?;
    let header: HashMap<String, String> = meta.to_string_map().into_iter().collect();
    let bytes = safetensors::serialize(views, &Some(header))?;
    crate::fsutil::write_atomic(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    Ok("safetensors (metadata in the header; load with python/gandist_generator.py)".into())
}
