//! `gandist classifier train`: the MNIST classifier that `eval` scores with.

use crate::data::mnist;
use crate::eval::classifier::{self, Classifier, TrainOptions};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Train the LeNet-style classifier on MNIST (seeded) and save it with a checksum.
    Train(TrainArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// MNIST folder (default: data/mnist).
    #[arg(long, env = "GANDIST_DATA")]
    data: Option<PathBuf>,
    /// Output file (default: <MNIST folder>/classifier.safetensors, where eval looks).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Seed of the initial weights and the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per update.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Adam's learning rate in the first epoch (halved after each epoch).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Train on the first N training images only (0 = all); for quick checks.
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// CPU threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Refuse to save a classifier below this test accuracy.
    #[arg(long, default_value_t = 0.99)]
    min_accuracy: f64,
}

pub fn run(action: Action) -> Result<ExitCode> {
    match action {
        Action::Train(a) => train(a),
    }
}

fn train(a: TrainArgs) -> Result<ExitCode> {
    let dir = mnist::resolve_dir(a.data.as_deref());
    let out = classifier::resolve_path(a.out.as_deref(), &dir);
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let device = crate::device::select(crate::config::DeviceChoice::Auto, 0)?;
    let (epochs, seed) = (a.epochs, a.seed);
    let opts = TrainOptions { epochs, batch_size: a.batch, lr: a.lr, seed, limit: a.limit };
    let (net, report) = Classifier::train(&dir, &opts, device)?;
    let acc = report.test_accuracy;
    println!("test accuracy {:.4} ({} training images, {epochs} epochs, {:.1} s)", acc, report.train_images, report.seconds);
    if acc < a.min_accuracy {
        bail!("test accuracy {acc:.4} is below --min-accuracy {}: not saved (train longer, or lower --min-accuracy for a quick check)", a.min_accuracy);
    }
    let info = [
        ("test_accuracy", format!("{acc}")),
        ("seed", seed.to_string()),
        ("epochs", epochs.to_string()),
        ("train_images", report.train_images.to_string()),
        ("train_seconds", format!("{:.1}", report.seconds)),
    ];
    net.save(&out, &info)?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
