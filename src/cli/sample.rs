//! `gandist sample`: images from a checkpoint's generator, from seeded noise or a given noise
//! file (`--noise z.npy`), as a PNG grid, a folder of PNGs, an IDX file or a float32 .npy
//! array; `--interpolate K` walks the latent space between points (a grid and an animated GIF).

use super::Weights;
use anyhow::{bail, Result};
use clap::ValueEnum;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint directory, or a run directory (its newest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Number of samples (default 64), or of latent walks with --interpolate. With --noise:
    /// the noise file's rows (give --n only to check that count).
    #[arg(long)]
    n: Option<usize>,
    /// Noise to generate from: a .npy file of float32, shape (N, latent), finite values.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Output: a file (grid, idx, npy) or a new folder (png-dir).
    #[arg(long)]
    out: PathBuf,
    /// grid: one PNG of all samples; png-dir: a new folder of one PNG per sample
    /// (000000.png, ...) for pytorch-fid and clean-fid; idx: an IDX file (n, 28, 28) for
    /// `eval --samples`; npy: the generator's float32 output (N, C, H, W) in [-1, 1].
    /// `png` is the old name of `grid`.
    #[arg(long, value_enum, default_value_t = Format::Grid)]
    format: Format,
    /// Seed of the generator's noise (without --noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which generator weights: the EMA ones when the checkpoint has them (auto), or not.
    #[arg(long, value_enum, default_value_t = Weights::Auto)]
    weights: Weights,
    /// A latent walk of K frames (K >= 2) from each seeded start to its seeded end (with
    /// --noise: from each row to the next), by spherical interpolation; the grid has one walk
    /// per row, and an animated GIF of the walks goes beside it (OUT with extension .gif).
    #[arg(long, value_name = "K")]
    interpolate: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Grid,
    PngDir,
    Idx,
    Npy,
    /// The old name of `grid` (kept for a release).
    #[value(hide = true)]
    Png,
}

/// Samples per generator call: bounds the memory of large --n (each batch becomes bytes, or
/// float32 for npy, as soon as it is made).
const BATCH: i64 = 1000;
/// Time per GIF frame.
const GIF_FRAME_MS: u32 = 80;

pub fn run(a: Args) -> Result<ExitCode> {
    let mut format = a.format;
    if format == Format::Png {
        tracing::warn!("--format png is deprecated: use --format grid (the same PNG grid); png will be removed in a later release");
        format = Format::Grid;
    }
    if a.n == Some(0) {
        bail!("--n must be at least 1");
    }
    if matches!(a.interpolate, Some(k) if k < 2) {
        bail!("--interpolate {}: expected K >= 2 frames per walk (its two ends and the points between)", a.interpolate.unwrap_or(0));
    }
    let gif = match a.interpolate {
        Some(_) if format == Format::Grid => {
            if a.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("gif")) {
                bail!("--out {}: with --interpolate, --out names the grid (a .png); the GIF goes beside it", a.out.display());
            }
            Some(a.out.with_extension("gif"))
        }
        _ => None,
    };
    let device = crate::device::select(crate::config::DeviceChoice::Auto, 0)?;
    let ck = crate::train::snapshot::load_generator(&a.checkpoint, a.weights.into(), device)?;
    let latent = ck.config.model.latent as usize;
    let points = match &a.noise {
        Some(path) => {
            let m = crate::npy::read_noise(path, latent)?;
            if let Some(n) = a.n.filter(|&n| n != m.rows) {
                bail!("--n {n} but {} holds {} rows of noise: give --n only to check the count, or leave it out", path.display(), m.rows);
            }
            Tensor::from_slice(&m.values).view([m.rows as i64, latent as i64])
        }
        None => {
            let n = a.n.unwrap_or(64) as i64;
            // A walk needs a start and an end: the first n draws start, the next n end.
            let draws = if a.interpolate.is_some() { 2 * n } else { n };
            crate::seeds::seed_torch(a.seed, crate::seeds::Stream::FixedNoise, 1);
            Tensor::randn([draws, latent as i64], (Kind::Float, Device::Cpu))
        }
    };
    let (z, columns) = match a.interpolate {
        None => (points, None),
        Some(k) => {
            let (starts, ends) = match &a.noise {
                Some(path) => {
                    let rows = points.size()[0];
                    if rows < 2 {
                        bail!("--interpolate with --noise {}: expected at least 2 rows (walks go from each row to the next), got {rows}", path.display());
                    }
                    (points.narrow(0, 0, rows - 1), points.narrow(0, 1, rows - 1))
                }
                None => {
                    let n = points.size()[0] / 2;
                    (points.narrow(0, 0, n), points.narrow(0, n, n))
                }
            };
            (walks(&starts, &ends, k)?, Some(k))
        }
    };
    let n = z.size()[0] as usize;
    let started = Instant::now();
    // Each batch leaves the device as what the format writes: bytes 0..255, or float32 for npy.
    let (mut bytes, mut floats) = (Vec::new(), Vec::new());
    for images in generate(&ck.generator, &z.to_device(device)) {
        match format {
            Format::Npy => floats.extend(crate::hostread::vec_f32(&images.flatten(0, -1))?),
            _ => bytes.extend(crate::model::to_bytes(&images)),
        }
    }
    let generated = started.elapsed().as_secs_f64();
    let (side, ch) = (ck.generator.side as usize, ck.generator.channels as usize);
    match format {
        Format::Grid | Format::Png => match columns {
            Some(k) => crate::samples::write_grid_with_columns(&a.out, &bytes, n, ch, side, k)?,
            None => crate::samples::write_grid(&a.out, &bytes, n, ch, side)?,
        },
        Format::PngDir => crate::samples::write_png_dir(&a.out, &bytes, n, ch, side)?,
        Format::Idx => crate::samples::write_idx_channels(&a.out, &bytes, n, ch, side)?,
        Format::Npy => crate::npy::write_f32(&a.out, &[n, ch, side, side], &std::mem::take(&mut floats))?,
    }
    let written = started.elapsed().as_secs_f64() - generated;
    if let (Some(path), Some(k)) = (&gif, columns) {
        write_walk_gif(path, &bytes, n / k, k, ch, side)?;
    }
    let which = if ck.ema { " (EMA weights)" } else { "" };
    let from = a.noise.as_ref().map_or(format!("seed {}", a.seed), |p| format!("noise {}", p.display()));
    tracing::info!(
        "wrote {n} samples from {}{which} (step {}, {from}) on {} to {} ({} s generating, {} s writing)",
        ck.dir.display(),
        ck.meta.step,
        crate::device::label(device),
        a.out.display(),
        round2(generated),
        round2(written)
    );
    if let Some(path) = &gif {
        tracing::info!("wrote the latent walk's animation to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The generator's output for the rows of `z`, a batch of `BATCH` rows at a time.
fn generate<'a>(g: &'a crate::model::Generator, z: &'a Tensor) -> impl Iterator<Item = Tensor> + 'a {
    let n = z.size()[0];
    (0..n).step_by(BATCH as usize).map(move |start| tch::no_grad(|| g.forward(&z.narrow(0, start, BATCH.min(n - start)))))
}

/// `k` points on each walk from a row of `starts` to the same row of `ends`, walk-major:
/// row w * k + j is walk w at t = j / (k - 1).
fn walks(starts: &Tensor, ends: &Tensor, k: usize) -> Result<Tensor> {
    let a = crate::hostread::vec_f32(&starts.contiguous().flatten(0, -1))?;
    let b = crate::hostread::vec_f32(&ends.contiguous().flatten(0, -1))?;
    let width = starts.size()[1] as usize;
    let mut out = Vec::with_capacity(a.len() * k);
    for (sa, sb) in a.chunks_exact(width).zip(b.chunks_exact(width)) {
        for j in 0..k {
            out.extend(slerp(sa, sb, j as f64 / (k - 1) as f64));
        }
    }
    Ok(Tensor::from_slice(&out).view([(a.len() / width * k) as i64, width as i64]))
}

/// Spherical interpolation from `a` (t = 0) to `b` (t = 1) along the great circle through
/// their directions (White 2016, "Sampling Generative Networks"): points of a Gaussian latent
/// keep a typical norm where linear interpolation would pass near the origin. Parallel
/// vectors fall back to linear interpolation.
pub fn slerp(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let cos = (dot / (norm(a) * norm(b))).clamp(-1.0, 1.0);
    let omega = cos.acos();
    let (wa, wb) = match omega.sin() {
        s if s.abs() < 1e-6 || !s.is_finite() => (1.0 - t, t),
        s => (((1.0 - t) * omega).sin() / s, (t * omega).sin() / s),
    };
    a.iter().zip(b).map(|(x, y)| (wa * *x as f64 + wb * *y as f64) as f32).collect()
}

/// The walks as an animation: frame j shows every walk at its j-th point, forwards then
/// back (a loop without a jump).
fn write_walk_gif(path: &Path, bytes: &[u8], walks: usize, k: usize, channels: usize, side: usize) -> Result<()> {
    let per_image = channels * side * side;
    let frame = |j: usize| -> Vec<u8> { (0..walks).flat_map(|w| bytes[(w * k + j) * per_image..(w * k + j + 1) * per_image].to_vec()).collect() };
    let order: Vec<usize> = (0..k).chain((1..k - 1).rev()).collect();
    let frames: Vec<Vec<u8>> = order.into_iter().map(frame).collect();
    crate::samples::write_gif(path, &frames, walks, channels, side, GIF_FRAME_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closed forms: the ends are the inputs exactly; between two orthogonal unit vectors
    /// the walk stays on the unit circle at angle t * 90 degrees (linear interpolation would
    /// dip to norm 0.71 at the middle); parallel vectors interpolate linearly.
    #[test]
    fn slerp_follows_the_great_circle() {
        let (a, b) = ([1.0f32, 0.0], [0.0f32, 1.0]);
        assert_eq!(slerp(&a, &b, 0.0), a.to_vec());
        assert_eq!(slerp(&a, &b, 1.0), b.to_vec());
        for t in [0.25, 0.5, 0.8] {
            let p = slerp(&a, &b, t);
            let angle = (t * std::f64::consts::FRAC_PI_2) as f32;
            assert!((p[0] - angle.cos()).abs() < 1e-6 && (p[1] - angle.sin()).abs() < 1e-6, "t {t}: {p:?}");
        }
        assert_eq!(slerp(&[1.0, 2.0], &[2.0, 4.0], 0.5), vec![1.5, 3.0]);
        // Walk-major layout: walk w's frame j is row w * k + j.
        let s = Tensor::from_slice(&[1.0f32, 0.0, 3.0, 0.0]).view([2, 2]);
        let e = Tensor::from_slice(&[0.0f32, 1.0, 0.0, 3.0]).view([2, 2]);
        let w = walks(&s, &e, 3).unwrap();
        assert_eq!(w.size(), vec![6, 2]);
        let v = crate::hostread::vec_f32(&w.flatten(0, -1)).unwrap();
        assert_eq!(&v[..2], &[1.0, 0.0]);
        assert_eq!(&v[6..8], &[3.0, 0.0]);
        assert!((v[8] - 3.0 * std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-5, "{v:?}");
    }
}
