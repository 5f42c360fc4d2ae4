//! Inception features of image sets, in batches on the network's device: a folder read as
//! pytorch-fid reads it, or generated images in [-1, 1] rounded to the bytes a PNG of them
//! would hold (so that a generator scores as its saved samples would under pytorch-fid).

use super::image_folder;
use super::inception::FidInception;
use anyhow::Result;
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

/// pytorch-fid's default batch size.
pub const BATCH: usize = 50;

/// Features (n, 2048), float32 on the CPU, of the images in `dir`; logs progress.
pub fn of_folder(net: &FidInception, dir: &Path, batch: usize) -> Result<Tensor> {
    let files = image_folder::list(dir)?;
    let n = files.len();
    let start = Instant::now();
    let mut parts = Vec::new();
    let mut done = 0usize;
    let mut last_log = Instant::now();
    for b in image_folder::Batches::new(files, batch.max(1)) {
        let b = b?;
        done += b.size()[0] as usize;
        parts.push(crate::hostread::to_cpu(&net.features(&b)));
        if last_log.elapsed().as_secs_f64() > 10.0 || done == n {
            last_log = Instant::now();
            let s = start.elapsed().as_secs_f64();
            tracing::info!("{}: {done}/{n} images, {:.1} images/s", dir.display(), done as f64 / s.max(1e-9));
        }
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Generator-range images (n, c, h, w) in [-1, 1] (c = 1 or 3) as pytorch-fid's input: the
/// byte each pixel would be saved as, / 255, grey repeated to 3 channels.
pub fn generated_to_unit(images: &Tensor) -> Tensor {
    let bytes = ((images + 1.0) * 127.5).round().clamp(0.0, 255.0);
    let x = bytes / 255.0;
    match x.size()[1] {
        1 => x.repeat([1, 3, 1, 1]),
        _ => x,
    }
}

/// Features (n, 2048), float32 on the CPU, of generator-range images, `batch` at a time.
pub fn of_generated(net: &FidInception, images: &Tensor, batch: usize) -> Tensor {
    let parts: Vec<Tensor> = images
        .split(batch.max(1) as i64, 0)
        .iter()
        .map(|b| crate::hostread::to_cpu(&net.features(&generated_to_unit(&b.to_device(net.device())))))
        .collect();
    Tensor::cat(&parts, 0)
}

/// Images/s of feature extraction: `batches` timed batches of random images of `side` x
/// `side` after one untimed batch (libtorch picks its kernels on the first).
pub fn throughput(net: &FidInception, batch: usize, batches: usize, side: i64) -> (f64, f64) {
    let x = Tensor::rand([batch as i64, 3, side, side], (Kind::Float, tch::Device::Cpu)).to_device(net.device());
    let sync = |t: &Tensor| crate::hostread::scalar(&t.sum(Kind::Double));
    sync(&net.features(&x));
    let start = Instant::now();
    for _ in 0..batches {
        sync(&net.features(&x));
    }
    let s = start.elapsed().as_secs_f64();
    ((batch * batches) as f64 / s, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_images_become_their_png_bytes() {
        let x = Tensor::from_slice(&[-1.0f32, -0.999, 0.0, 0.5, 1.0, 1.3]).view([1, 1, 2, 3]);
        let u = generated_to_unit(&x);
        assert_eq!(u.size(), vec![1, 3, 2, 3]);
        let want = [0.0, 0.0, 128.0, 191.0, 255.0, 255.0].map(|b: f64| b / 255.0);
        let got: Vec<f32> = Vec::try_from(&u.get(0).get(2).flatten(0, -1)).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-7, "{got:?}");
        }
    }
}
