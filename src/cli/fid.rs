//! `gandist fid`: Inception FID of two image sets as `python -m pytorch_fid PATH1 PATH2`
//! computes it (each path a folder of images or a statistics `.npz`), optionally KID and
//! precision/recall of two folders; `--save-stats PATH OUT.npz` writes a set's statistics
//! once; `--bench` measures feature extraction with random weights.

use crate::eval::{features, frechet::Gaussian, inception::{self, FidInception}, kid, precision_recall, stats_file};
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::Tensor;

#[derive(clap::Args)]
pub struct Args {
    /// Two folders of images or pytorch-fid statistics files (.npz with mu and sigma); with
    /// --save-stats, the folder and the .npz to write.
    #[arg(num_args = 0..=2, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// The weights of pytorch-fid's FID Inception, pt_inception-2015-12-05-6726825d.pth as
    /// pytorch-fid downloads it (default: $GANDIST_INCEPTION_WEIGHTS, else torch hub's copy).
    #[arg(long, value_name = "FILE")]
    inception_weights: Option<PathBuf>,
    /// Write the statistics of the first path (a folder) to the second (.npz), as
    /// pytorch-fid's --save-stats does.
    #[arg(long)]
    save_stats: bool,
    /// Images per forward pass (pytorch-fid's default; it does not change the result beyond
    /// float rounding).
    #[arg(long, default_value_t = features::BATCH)]
    batch_size: usize,
    /// cpu, cuda, cuda:N or auto (a GPU when there is one).
    #[arg(long, default_value = "auto")]
    device: crate::config::DeviceChoice,
    /// Also KID (torch-fidelity's: cubic polynomial kernel, unbiased, in subsets); both paths
    /// must be folders.
    #[arg(long)]
    kid: bool,
    /// KID subsets (torch-fidelity's default).
    #[arg(long, default_value_t = kid::SUBSETS)]
    kid_subsets: usize,
    /// Features per KID subset (torch-fidelity's default; at most the smaller set's size).
    #[arg(long, default_value_t = kid::SUBSET_SIZE)]
    kid_subset_size: usize,
    /// Also precision and recall (Kynkaanniemi et al. 2019, k = 3) of PATH1 (generated)
    /// against PATH2 (real); both paths must be folders.
    #[arg(long)]
    precision_recall: bool,
    /// Measure feature extraction (images/s) with random weights instead; no paths needed.
    #[arg(long, conflicts_with_all = ["save_stats", "kid", "precision_recall"])]
    bench: bool,
    /// With --bench, timed batches (after one untimed).
    #[arg(long, default_value_t = 4)]
    bench_batches: usize,
    /// CPU threads (0 = the cores of this process's affinity mask).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

/// One input's statistics, and its features when it is a folder.
struct Side {
    gaussian: Gaussian,
    features: Option<Tensor>,
    label: String,
}

fn side(net: &FidInception, path: &Path, batch: usize) -> Result<Side> {
    if stats_file::is_stats(path) {
        return Ok(Side { gaussian: stats_file::read(path)?, features: None, label: format!("{} (statistics)", path.display()) });
    }
    if !path.is_dir() {
        bail!("Invalid path: {} is neither a folder of images nor a .npz statistics file", path.display());
    }
    let f = features::of_folder(net, path, batch)?;
    let n = f.size()[0];
    Ok(Side { gaussian: Gaussian::of_features(&f)?, features: Some(f), label: format!("{} ({n} images)", path.display()) })
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    } else {
        crate::cpus::set_threads_alone()?;
    }
    let device = crate::device::select(a.device, 0)?;
    if a.bench {
        return bench(&a, device);
    }
    if a.paths.len() != 2 {
        bail!("give two paths: PATH1 PATH2 (folders of images or .npz statistics), or --save-stats FOLDER OUT.npz");
    }
    let (p1, p2) = (&a.paths[0], &a.paths[1]);
    if a.save_stats {
        if stats_file::is_stats(p1) || !p1.is_dir() {
            bail!("--save-stats reads a folder of images: {} is not one", p1.display());
        }
        if !stats_file::is_stats(p2) {
            bail!("--save-stats writes a .npz file: {} does not end in .npz", p2.display());
        }
        if p2.exists() {
            bail!("Existing output file: {} (remove it first; the statistics are not overwritten)", p2.display());
        }
    }
    for p in [p1, p2].iter().take(if a.save_stats { 1 } else { 2 }) {
        if !p.exists() {
            bail!("Invalid path: {}", p.display());
        }
    }
    if (a.kid || a.precision_recall) && [p1, p2].iter().any(|p| stats_file::is_stats(p)) {
        bail!("--kid and --precision-recall need the features of both sets: give two folders, not statistics files");
    }
    let weights = inception::resolve_weights(a.inception_weights.as_deref(), "")?;
    let net = FidInception::load(&weights, device)?;
    if !net.published {
        tracing::warn!("{} is not the published pytorch-fid weight file (SHA-256 differs from {}): the values are not comparable with published FIDs", weights.display(), inception::WEIGHTS_SHA256);
    }
    tracing::info!("Inception on {}, weights {}", crate::device::label(device), net.origin);
    if a.save_stats {
        let s = side(&net, p1, a.batch_size)?;
        println!("Saving statistics for {}", p1.display());
        stats_file::write(p2, &s.gaussian)?;
        println!("wrote {}", p2.display());
        return Ok(ExitCode::SUCCESS);
    }
    let (s1, s2) = (side(&net, p1, a.batch_size)?, side(&net, p2, a.batch_size)?);
    let fid = crate::eval::frechet::pytorch_fid_distance(&s1.gaussian, &s2.gaussian)?;
    let mut out = Map::new();
    out.insert("inception_fid".into(), json!(fid));
    println!("{}\n{}", s1.label, s2.label);
    println!("FID:  {fid}");
    if let (Some(f1), Some(f2)) = (&s1.features, &s2.features) {
        if a.kid {
            let k = kid::kid(f1, f2, a.kid_subsets, a.kid_subset_size, kid::SEED)?;
            println!("KID:  {} ± {} ({} subsets of {})", k.mean, k.std, k.subsets, k.subset_size);
            out.insert("kid".into(), json!(k.mean));
            out.insert("kid_std".into(), json!(k.std));
        }
        if a.precision_recall {
            let pr = precision_recall::precision_recall(f1, f2, precision_recall::K)?;
            println!("precision: {}\nrecall:    {}", pr.precision, pr.recall);
            out.insert("precision".into(), json!(pr.precision));
            out.insert("recall".into(), json!(pr.recall));
        }
    }
    println!("{}", Value::Object(out));
    Ok(ExitCode::SUCCESS)
}

fn bench(a: &Args, device: tch::Device) -> Result<ExitCode> {
    tch::manual_seed(0);
    let net = FidInception::random(device);
    // The input size does not matter much: every image is resized to 299 x 299 first.
    let (rate, seconds) = features::throughput(&net, a.batch_size.max(1), a.bench_batches.max(1), 64);
    let threads = tch::get_num_threads();
    println!(
        "Inception feature extraction on {} ({threads} threads), batch {}: {rate:.2} images/s ({} images in {seconds:.1} s); 10,000 images: {:.1} min",
        crate::device::label(device),
        a.batch_size,
        a.batch_size * a.bench_batches,
        10_000.0 / rate / 60.0
    );
    Ok(ExitCode::SUCCESS)
}
