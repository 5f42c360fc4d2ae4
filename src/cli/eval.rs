//! `gandist eval`: sample quality of a checkpoint's generator or of an IDX file of samples:
//! the MNIST classifier's scores (the default), or with `--metric` Inception FID, KID and
//! precision/recall against a data set (`--reference`, else the MNIST training images,
//! featurised once and cached).

use super::Weights;
use crate::data::mnist;
use crate::eval::inception_metrics::{self as im, InceptionEvaluator, Metric, Reference};
use crate::eval::{self, classifier as cls, features, inception, stats_file, Evaluator};
use anyhow::{bail, Result};
use serde_json::Value;
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
    /// What to score, comma-separated: classifier-fid (gandist's MNIST classifier: FID,
    /// classes covered, KL, confidence), inception-fid (pytorch-fid's), kid (torch-fidelity's),
    /// precision-recall (k = 3).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "classifier-fid")]
    metric: Vec<EvalMetric>,
    /// The real images the Inception metrics compare against: a folder of images or a
    /// pytorch-fid .npz (inception-fid only). Default: the first --reference-n MNIST training
    /// images of --data, featurised once and cached ($GANDIST_CACHE/inception-reference).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// MNIST training images in the default reference (0 = all 60,000).
    #[arg(long, default_value_t = 10_000)]
    reference_n: usize,
    /// pytorch-fid's weight file (default: $GANDIST_INCEPTION_WEIGHTS, else torch hub's copy).
    #[arg(long, value_name = "FILE")]
    inception_weights: Option<PathBuf>,
    /// Images per Inception forward pass.
    #[arg(long, default_value_t = features::BATCH)]
    batch_size: usize,
}

/// The scores `--metric` names.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EvalMetric {
    ClassifierFid,
    InceptionFid,
    Kid,
    PrecisionRecall,
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
    let inception: Vec<Metric> = a
        .metric
        .iter()
        .filter_map(|m| match m {
            EvalMetric::ClassifierFid => None,
            EvalMetric::InceptionFid => Some(Metric::InceptionFid),
            EvalMetric::Kid => Some(Metric::Kid),
            EvalMetric::PrecisionRecall => Some(Metric::PrecisionRecall),
        })
        .collect();
    let mut json = serde_json::Map::new();
    println!("{source}");
    if a.metric.contains(&EvalMetric::ClassifierFid) {
        let path = cls::resolve_path(a.classifier.as_deref(), &data_dir);
        let evaluator = Evaluator::load(&path, device)?;
        let report = evaluator.evaluate(&images)?;
        print!("{}", report.table());
        json.extend(report.to_json());
    }
    if !inception.is_empty() {
        let weights = inception::resolve_weights(a.inception_weights.as_deref(), "")?;
        let net = inception::FidInception::load(&weights, device)?;
        if !net.published {
            tracing::warn!("{} is not the published pytorch-fid weight file: the values are not comparable with published figures", weights.display());
        }
        let reference = match &a.reference {
            Some(p) if stats_file::is_stats(p) => Reference::from_stats(p)?,
            Some(p) if p.is_dir() => Reference::from_folder(&net, p, a.batch_size)?,
            Some(p) => bail!("--reference {}: expected a folder of images or a .npz statistics file", p.display()),
            None => im::mnist_reference(&net, &data_dir, a.reference_n, a.batch_size)?,
        };
        println!("reference: {}", reference.label);
        let ev = InceptionEvaluator::new(net, reference, inception, a.batch_size)?;
        let scores = ev.evaluate(&images)?;
        for (k, v) in &scores {
            println!("{k:<20} {v}");
        }
        json.extend(scores);
    }
    println!("{}", Value::Object(json));
    Ok(ExitCode::SUCCESS)
}
