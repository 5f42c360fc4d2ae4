//! Historical averaging (Salimans et al. 2016): lambda ||theta - theta_bar||^2, where theta_bar
//! is the mean of the parameters after every past update (the initial ones included). Like L2
//! it depends on parameters only, identical on every rank, so its gradient 2 lambda
//! (theta - theta_bar) is added after the all-reduce, and the running mean is identical on
//! every rank; the checkpoint keeps the mean and its count.

use tch::{Kind, Tensor};

pub struct HistoricalAverage {
    pub lambda: f64,
    /// Mean of the parameter values seen so far (flat, like the network's buffer).
    pub mean: Tensor,
    /// How many values the mean holds, as a one-element float32 tensor (exact to 2^24, about
    /// 16.7 million updates), so that it travels in the checkpoint with the other state tensors.
    pub count: Tensor,
}

impl HistoricalAverage {
    /// The mean starts at the initial parameters (count 1).
    pub fn new(params: &Tensor, lambda: f64) -> Self {
        HistoricalAverage {
            lambda,
            mean: params.detach().copy(),
            count: Tensor::from_slice(&[1.0f32]).to_device(params.device()),
        }
    }

    /// Adds 2 lambda (theta - mean) to `grad` in place; returns the unweighted
    /// ||theta - mean||^2 (the loss term is lambda times it), on the device.
    pub fn apply(&self, grad: &Tensor, params: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let diff = params - &self.mean;
            let mut g = grad.shallow_clone();
            let _ = g.g_add_(&(&diff * (2.0 * self.lambda)));
            diff.square().sum(Kind::Float)
        })
    }

    /// Folds the parameters after an update into the mean, mean += (theta - mean) / (n + 1),
    /// where `apply` (a one-element bool tensor: the update was taken) is true; on the device.
    pub fn record(&mut self, params: &Tensor, apply: &Tensor) {
        tch::no_grad(|| {
            let n = &self.count + 1.0;
            let mean = self.mean.lerp_tensor(params, &n.reciprocal());
            crate::optim::select_into(&self.mean, apply, &mean);
            crate::optim::select_into(&self.count, apply, &n);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After theta_0 and three updates the mean is the plain average of the four values, and
    /// the gradient term is 2 lambda (theta - mean).
    #[test]
    fn mean_after_a_known_sequence() {
        let seq = [[1.0f32, 0.0], [3.0, 2.0], [2.0, -4.0], [6.0, 2.0]];
        let mut h = HistoricalAverage::new(&Tensor::from_slice(&seq[0]), 0.5);
        for s in &seq[1..] {
            h.record(&Tensor::from_slice(s), &Tensor::from(true));
            // A skipped update is not recorded.
            h.record(&Tensor::from_slice(&[1e6f32, 1e6]), &Tensor::from(false));
        }
        let mean = crate::hostread::vec_f32(&h.mean).unwrap();
        // Incremental means in float32: exact up to rounding of the running updates.
        assert!((mean[0] - 3.0).abs() < 1e-6 && mean[1].abs() < 1e-6, "{mean:?}");
        h.mean.copy_(&Tensor::from_slice(&[3.0f32, 0.0]));
        assert_eq!(crate::hostread::scalar(&h.count), 4.0);
        let theta = Tensor::from_slice(&[5.0f32, 1.0]);
        let g = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        let v = crate::hostread::scalar(&h.apply(&g, &theta));
        assert!((v - (4.0 + 1.0)).abs() < 1e-6);
        assert_eq!(crate::hostread::vec_f32(&g).unwrap(), vec![2.0, 1.0]);
    }
}
