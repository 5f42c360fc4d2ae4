//! `gandist eval`: sample quality of a checkpoint's generator or of an IDX file of samples.

use super::Weights;
use crate::data::mnist;
use crate::eval::{self, classifier as cls, Evaluator};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint directory, or a run directory (its newest checkpoint).
    #[arg(long, conflicts_with = "samples", required_unless_present = "samples")]
    checkpoint: Option<PathBuf>,
    /// An IDX file of 28x28 images (n, 28, 28), raw or gzip, instead of a checkpoint.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Samples to generate (default 10000); with --samples, use only the first N.
    #[arg(long)]
    n: Option<usize>,
    /// Seed of the generator's noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// MNIST folder (default: data/mnist).
    #[arg(long, env = "GANDIST_DATA")]
    data: Option<PathBuf>,
    /// Classifier file (default: <MNIST folder>/classifier.safetensors).
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// With --checkpoint, which generator weights: the EMA ones when the run kept them (auto), or not.
    #[arg(long, value_enum, default_value_t = Weights::Auto)]
    weights: Weights,
    /// CPU threads (0 = the cores of this process's affinity mask, as a one-process `train`
    /// with train.threads = 0). Give the run's train.threads to reproduce its logged FID
    /// to the last digit: the thread count changes the summation order.
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    } else {
        crate::cpus::set_threads_alone()?;
    }
    if a.n.is_some_and(|n| n < 2) {
        bail!("--n must be at least 2 (the Frechet distance needs a covariance)");
    }
    let data_dir = mnist::resolve_dir(a.data.as_deref());
    let device = crate::device::select(crate::config::DeviceChoice::Auto, 0)?;
    // Inputs are checked before the classifier is loaded: their errors come first.
    let (images, source) = match (&a.checkpoint, &a.samples) {
        (Some(c), _) => {
            let ck = crate::train::snapshot::load_generator(c, a.weights.into(), device)?;
            let n = a.n.unwrap_or(10_000);
            let which = if ck.ema { ", EMA weights" } else { "" };
            let on = crate::device::label(device);
            let seed = a.seed;
            (eval::generate(&ck.generator, n, seed), format!("{} (step {}{which}), {n} samples, seed {seed}, on {on}", ck.dir.display(), ck.meta.step))
        }
        (None, Some(p)) => {
            let (images, total) = eval::read_samples(p, a.n)?;
            let count = images.size()[0];
            (images, format!("{} ({count} of {total} images)", p.display()))
        }
        (None, None) => bail!("give --checkpoint or --samples"),
    };
    let path = cls::resolve_path(a.classifier.as_deref(), &data_dir);
    let evaluator = Evaluator::load(&path, device)?;
    let report = evaluator.evaluate(&images)?;
    println!("{source}");
    print!("{}", report.table());
    println!("{}", serde_json::Value::Object(report.to_json()));
    Ok(ExitCode::SUCCESS)
}
