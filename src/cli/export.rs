//! `gandist export`: a checkpoint's generator as a TorchScript, ONNX or safetensors file
//! that reproduces gandist's output for the same noise (docs/export.md).

use super::Weights;
use crate::export::{self, Format};
use anyhow::Result;
use clap::ValueEnum;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint directory, or a run directory (its newest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// torchscript (torch.jit.load), onnx (onnxruntime, opset 17), or safetensors (weights for
    /// python/gandist_generator.py).
    #[arg(long, value_enum)]
    format: FormatArg,
    /// Output file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Which generator weights: the EMA ones when the checkpoint has them (auto), or not.
    #[arg(long, value_enum, default_value_t = Weights::Auto)]
    weights: Weights,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Torchscript,
    Onnx,
    Safetensors,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Torchscript => Format::TorchScript,
            FormatArg::Onnx => Format::Onnx,
            FormatArg::Safetensors => Format::Safetensors,
        }
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    // Exports are made on the CPU: the file's weights are the checkpoint's, whatever device
    // the runtime later puts them on.
    let ck = crate::train::snapshot::load_generator(&a.checkpoint, a.weights.into(), tch::Device::Cpu)?;
    let format: Format = a.format.into();
    let (meta, about) = export::export(&ck, format, &a.out)?;
    tracing::info!("exported the generator of {} to {} as {about}", ck.dir.display(), a.out.display());
    tracing::info!("{}", meta.summary());
    Ok(ExitCode::SUCCESS)
}
