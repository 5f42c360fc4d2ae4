//! `gandist bench`: images/s of the WGAN-GP iteration (n_critic critic updates + one
//! generator update) on synthetic data, so that it needs no data set.

use crate::config::Config;
use crate::data::{DeviceImages, Mnist};
use crate::dist::Local;
use crate::train::Trainer;
use anyhow::Result;
use std::rc::Rc;
use std::time::Instant;
use tch::Device;

pub struct BenchResult {
    pub batch: i64,
    pub iterations: u64,
    pub seconds: f64,
    pub images_per_second: f64,
    pub ms_per_iteration: f64,
}

/// Random images in place of MNIST: the step's cost does not depend on pixel values.
fn synthetic(n: usize) -> Mnist {
    let mut rng = crate::data::sampler::SplitMix64::new(1);
    let images = (0..n * 28 * 28).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Mnist { images, labels, n }
}

pub fn run(mut cfg: Config, device: Device, warmup: u64, iterations: u64) -> Result<BenchResult> {
    cfg.train.iterations = warmup + iterations;
    let data = DeviceImages::from_mnist(&synthetic((cfg.data.batch_size as usize * 4).max(1024)), device)?;
    let mut t = Trainer::new(cfg.clone(), Rc::new(Local), device, data)?;
    for _ in 0..warmup {
        t.iteration(false)?;
    }
    sync(device);
    let start = Instant::now();
    for _ in 0..iterations {
        t.iteration(false)?;
    }
    sync(device);
    let seconds = start.elapsed().as_secs_f64();
    let images = (cfg.data.batch_size as u64 * cfg.train.n_critic * iterations) as f64;
    Ok(BenchResult {
        batch: cfg.data.batch_size,
        iterations,
        seconds,
        images_per_second: images / seconds,
        ms_per_iteration: 1e3 * seconds / iterations as f64,
    })
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
