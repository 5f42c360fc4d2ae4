//! Training data: the IDX format, the MNIST files, the distributed sampler, and the whole
//! training set held on the device as images in [-1, 1].

pub mod idx;
pub mod mnist;
pub mod sampler;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

pub use mnist::{Mnist, Split};

/// A data set resident on the device, gathered by index each step.
pub struct DeviceImages {
    pub images: Tensor,
    pub labels: Tensor,
    pub n: usize,
    /// Stacked MNIST: row i names the three images that form channels 0, 1, 2 of image i.
    pub stack: Option<Tensor>,
}

impl DeviceImages {
    /// Bytes 0..255 become floats in [-1, 1], shaped (n, 1, 28, 28).
    pub fn from_mnist(m: &Mnist, device: Device) -> Result<Self> {
        let side = mnist::SIDE as i64;
        let images = Tensor::from_slice(&m.images)
            .to_kind(Kind::Float)
            .view([m.n as i64, 1, side, side])
            .divide_scalar(127.5)
            .g_sub_scalar(1.0)
            .to_device(device);
        let labels = Tensor::from_slice(&m.labels).to_kind(Kind::Int64).to_device(device);
        Ok(DeviceImages { images, labels, n: m.n, stack: None })
    }

    /// Stacked MNIST over the same images: n stacked images, each channel an independent
    /// uniform draw of the n digits, fixed by the run's `seed` (every rank builds the same set).
    pub fn stacked(self, seed: u64) -> Self {
        let mut rng = crate::seeds::SplitMix64::new(crate::seeds::stacking_seed(seed));
        let picks: Vec<i64> = (0..self.n * 3).map(|_| rng.below(self.n as u64) as i64).collect();
        let stack = Tensor::from_slice(&picks).view([self.n as i64, 3]).to_device(self.images.device());
        DeviceImages { stack: Some(stack), ..self }
    }

    /// The items of `dataset`: these images, or stacked MNIST made of them.
    pub fn for_dataset(self, dataset: crate::config::Dataset, seed: u64) -> Self {
        match dataset {
            crate::config::Dataset::StackedMnist if self.stack.is_none() => self.stacked(seed),
            _ => self,
        }
    }

    /// Image channels of each item (1, or 3 when stacked).
    pub fn channels(&self) -> i64 {
        if self.stack.is_some() { 3 } else { 1 }
    }

    /// The items at `idx` (int64, on the data's device), shaped (b, channels, 28, 28).
    pub fn batch(&self, idx: &Tensor) -> Tensor {
        match &self.stack {
            None => self.images.index_select(0, idx),
            Some(stack) => {
                let side = mnist::SIDE as i64;
                let digits = stack.index_select(0, idx).view([-1]);
                self.images.index_select(0, &digits).view([idx.size()[0], 3, side, side])
            }
        }
    }
}

/// The sampler's order on the device: each epoch's permutation is uploaded once (queued,
/// through pinned memory on CUDA) and a batch's indices are a slice of it, so that taking a
/// batch never makes the host wait for the device.
pub struct DeviceOrder {
    sampler: sampler::DistributedSampler,
    device: Device,
    /// The permutations of the latest epochs used (feature matching looks one batch back,
    /// which may be in the previous epoch).
    epochs: Vec<(u64, Tensor)>,
}

impl DeviceOrder {
    pub fn new(sampler: sampler::DistributedSampler, device: Device) -> Self {
        DeviceOrder { sampler, device, epochs: Vec::new() }
    }

    /// This rank's indices for global batch `step`: `sampler.rank_indices(step)` on the device.
    pub fn indices(&mut self, step: u64) -> Tensor {
        let (epoch, start, len) = self.sampler.rank_slice(step);
        let perm = match self.epochs.iter().find(|(e, _)| *e == epoch) {
            Some((_, p)) => p.shallow_clone(),
            None => {
                let host: Vec<i64> = self.sampler.permutation(epoch).into_iter().map(i64::from).collect();
                let p = crate::device::upload(&Tensor::from_slice(&host), self.device);
                if self.epochs.len() == 2 {
                    let _ = self.epochs.remove(0);
                }
                self.epochs.push((epoch, p.shallow_clone()));
                p
            }
        };
        perm.narrow(0, start as i64, len as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize) -> Mnist {
        // Image i is filled with the value i, so a channel shows which image it came from.
        let images = (0..n).flat_map(|i| vec![i as u8; mnist::SIDE * mnist::SIDE]).collect();
        Mnist { images, labels: vec![0; n], n }
    }

    #[test]
    fn stacked_items_are_three_seeded_digits() {
        let d = DeviceImages::from_mnist(&tiny(50), Device::Cpu).unwrap().stacked(9);
        assert_eq!(d.channels(), 3);
        let b = d.batch(&Tensor::from_slice(&[4i64, 7]));
        assert_eq!(b.size(), vec![2, 3, 28, 28]);
        let stack = crate::hostread::vec_i64(d.stack.as_ref().unwrap()).unwrap();
        for (row, item) in [4usize, 7].iter().enumerate() {
            for ch in 0..3 {
                let want = stack[item * 3 + ch] as f64 / 127.5 - 1.0;
                let got = b.get(row as i64).get(ch as i64);
                let (lo, hi) = (crate::hostread::scalar(&got.min()), crate::hostread::scalar(&got.max()));
                assert!((lo - want).abs() < 1e-6 && (hi - want).abs() < 1e-6);
            }
        }
        // The same seed gives the same stacks; the three channels are not one digit copied.
        let again = DeviceImages::from_mnist(&tiny(50), Device::Cpu).unwrap().stacked(9);
        assert!(again.stack.unwrap().equal(d.stack.as_ref().unwrap()));
        assert!(stack.chunks(3).any(|c| c[0] != c[1] || c[1] != c[2]));
        assert_eq!(DeviceImages::from_mnist(&tiny(5), Device::Cpu).unwrap().batch(&Tensor::from_slice(&[1i64])).size(), vec![1, 1, 28, 28]);
    }

    /// The device order gives exactly the sampler's indices, across epoch boundaries and when
    /// looking back into the previous epoch.
    #[test]
    fn device_order_matches_the_sampler() {
        let (n, global, world) = (50, 12, 3);
        for rank in 0..world {
            let mut host = sampler::DistributedSampler::new(n, global, rank, world, 5);
            let mut dev = DeviceOrder::new(sampler::DistributedSampler::new(n, global, rank, world, 5), Device::Cpu);
            for step in [0u64, 1, 3, 4, 3, 8, 7, 12, 2] {
                assert_eq!(crate::hostread::vec_i64(&dev.indices(step)).unwrap(), host.rank_indices(step), "rank {rank} step {step}");
            }
        }
    }
}
