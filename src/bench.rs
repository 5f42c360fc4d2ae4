//! `gandist bench`: images/s of the WGAN-GP iteration (n_critic critic updates + one
//! generator update) on synthetic data, so that it needs no data set; under mpirun, also the
//! all-reduce's bytes, time and share of the step.

use crate::config::Config;
use crate::data::{DeviceImages, Mnist};
use crate::dist::Collective;
use crate::train::step::AllReduceStats;
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
    pub world_size: usize,
    /// libtorch's CPU threads in this rank.
    pub threads: i32,
    /// Float32 values in the generator and the critic.
    pub params: (i64, i64),
    /// All-reduces of the timed iterations only.
    pub allreduce: AllReduceStats,
}

impl BenchResult {
    /// One line per figure, for people and for docs/.
    pub fn report(&self, device: Device, backend: &str) -> String {
        let mut s = format!(
            "device {device:?} backend {backend} ranks {} threads per rank {} global batch {} iterations {}\n\
             time {:.3} s, {:.2} ms/iteration, {:.1} images/s (critic images: n_critic x batch x iterations / s)\n\
             parameters: generator {} critic {} ({:.2} MB and {:.2} MB of float32)",
            self.world_size,
            self.threads,
            self.batch,
            self.iterations,
            self.seconds,
            self.ms_per_iteration,
            self.images_per_second,
            self.params.0,
            self.params.1,
            self.params.0 as f64 * 4e-6,
            self.params.1 as f64 * 4e-6,
        );
        if self.allreduce.calls > 0 {
            let a = &self.allreduce;
            s += &format!(
                "\nall-reduce: {} calls, {:.3} MB per update on average, {:.3} ms per update, {:.1}% of the step",
                a.calls,
                a.bytes as f64 / a.calls as f64 * 1e-6,
                a.seconds / a.calls as f64 * 1e3,
                100.0 * a.seconds / self.seconds
            );
        }
        s
    }
}

/// Random images in place of MNIST: the step's cost does not depend on pixel values.
fn synthetic(n: usize) -> Mnist {
    let mut rng = crate::data::sampler::SplitMix64::new(1);
    let images = (0..n * 28 * 28).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Mnist { images, labels, n }
}

pub fn run(mut cfg: Config, comm: Rc<dyn Collective>, device: Device, warmup: u64, iterations: u64) -> Result<BenchResult> {
    cfg.train.iterations = warmup + iterations;
    let data = DeviceImages::from_mnist(&synthetic((cfg.data.batch_size as usize * 4).max(1024)), device)?;
    let world_size = comm.world_size();
    let mut t = Trainer::new(cfg.clone(), comm, device, data)?;
    for _ in 0..warmup {
        t.iteration(false)?;
    }
    sync(device);
    t.allreduce = AllReduceStats::default();
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
        world_size,
        threads: tch::get_num_threads(),
        params: (t.generator.params.numel(), t.critic.params.numel()),
        allreduce: t.allreduce,
    })
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
