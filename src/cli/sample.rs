//! `gandist sample`: images from a checkpoint's generator, as a PNG grid or an IDX file.

use super::Weights;
use crate::data::mnist;
use anyhow::{bail, Result};
use clap::ValueEnum;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint directory, or a run directory (its newest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// A PNG grid, or an IDX file of the images (n, 28, 28) for `eval --samples`.
    #[arg(long, value_enum, default_value_t = Format::Png)]
    format: Format,
    /// Seed of the generator's noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which generator weights: the EMA ones when the checkpoint has them (auto), or not.
    #[arg(long, value_enum, default_value_t = Weights::Auto)]
    weights: Weights,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Png,
    Idx,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let device = crate::device::select(crate::config::DeviceChoice::Auto, 0)?;
    let ck = crate::train::snapshot::load_generator(&a.checkpoint, a.weights.into(), device)?;
    crate::seeds::seed_torch(a.seed, crate::seeds::Stream::FixedNoise, 1);
    let n = a.n;
    let z = tch::Tensor::randn([n as i64, ck.config.model.latent], (tch::Kind::Float, tch::Device::Cpu)).to_device(device);
    let bytes = tch::no_grad(|| crate::model::to_bytes(&ck.generator.forward(&z)));
    let (side, ch) = (mnist::SIDE, ck.generator.channels as usize);
    match a.format {
        Format::Png => crate::samples::write_grid(&a.out, &bytes, n, ch, side)?,
        Format::Idx => crate::samples::write_idx_channels(&a.out, &bytes, n, ch, side)?,
    }
    let which = if ck.ema { " (EMA weights)" } else { "" };
    tracing::info!("wrote {n} samples from {}{which} (step {}) on {} to {}", ck.dir.display(), ck.meta.step, crate::device::label(device), a.out.display());
    Ok(ExitCode::SUCCESS)
}
