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
        Ok(DeviceImages { images, labels, n: m.n })
    }

    pub fn batch(&self, indices: &[i64]) -> Tensor {
        let idx = Tensor::from_slice(indices).to_device(self.images.device());
        self.images.index_select(0, &idx)
    }
}
