//! `gandist bench`: images/s of the WGAN-GP iteration (n_critic critic updates + one
//! generator update) on synthetic data, so that it needs no data set; under mpirun, also the
//! all-reduce's bytes, time and share of the step; and the host reads of device data made by
//! the timed iterations (0: they run as between sync steps of a training).

use crate::config::Config;
use crate::data::{DeviceImages, Mnist};
use crate::collectives::Collective;
use crate::train::{AllReduceStats, Trainer};
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
    /// n_critic + 1.
    pub updates_per_iteration: u64,
    pub world_size: usize,
    /// libtorch's CPU threads in this rank.
    pub threads: i32,
    /// Float32 values in the generator and the critic.
    pub params: (i64, i64),
    /// All-reduces of the timed iterations only.
    pub allreduce: AllReduceStats,
    /// Host reads of device data during the timed iterations (`hostread`), and the MPI
    /// backend's staging reads apart.
    pub host_reads: u64,
    pub staged_reads: u64,
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
                "\nall-reduce: {} calls, {:.3} MB per update on average, {:.3} ms per update, {:.1}% of the step{}",
                a.calls,
                a.bytes as f64 / a.calls as f64 * 1e-6,
                a.seconds / a.calls as f64 * 1e3,
                100.0 * a.seconds / self.seconds,
                if backend == "nccl" { " (host time to queue it: NCCL runs on the device's queue)" } else { "" }
            );
        }
        let updates = self.iterations * (self.updates_per_iteration);
        s += &format!("\nhost reads of device data in the timed iterations: {} ({:.2} per update)", self.host_reads, self.host_reads as f64 / updates.max(1) as f64);
        if self.staged_reads > 0 {
            s += &format!("; {} more staged the MPI backend's reductions through the host", self.staged_reads);
        }
        s
    }
}

/// Random images in place of MNIST: the step's cost does not depend on pixel values.
fn synthetic(n: usize) -> Mnist {
    let mut rng = crate::seeds::SplitMix64::new(1);
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
        t.iteration()?;
    }
    t.sync()?;
    t.reset_allreduce_stats();
    let (reads_before, staged_before) = (crate::hostread::count(), crate::hostread::staged());
    let start = Instant::now();
    for _ in 0..iterations {
        t.iteration()?;
    }
    let (host_reads, staged_reads) = (crate::hostread::count() - reads_before, crate::hostread::staged() - staged_before);
    // The one read of a sync step waits for the device to finish the timed work.
    let synced = t.sync()?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(u) = synced.iter().flat_map(|it| it.critic.iter().chain([&it.generator])).find(|u| u.skipped) {
        anyhow::bail!("a timed update was skipped (non-finite gradient): {u:?}");
    }
    let images = (cfg.data.batch_size as u64 * cfg.train.n_critic * iterations) as f64;
    Ok(BenchResult {
        batch: cfg.data.batch_size,
        iterations,
        seconds,
        images_per_second: images / seconds,
        ms_per_iteration: 1e3 * seconds / iterations as f64,
        updates_per_iteration: cfg.train.n_critic + 1,
        world_size,
        threads: tch::get_num_threads(),
        params: t.param_counts(),
        allreduce: t.allreduce_stats(),
        host_reads,
        staged_reads,
    })
}
