//! L2 regularisation lambda ||theta||^2 as a gradient term 2 lambda theta (weight decay in the
//! loss, not decoupled). It acts on parameters, which are identical on every rank, so it is
//! added to the already all-reduced gradient: adding it before the reduction would give the
//! same mean but cost a pass over the buffer on every rank for nothing.

use tch::Tensor;

/// Adds 2 lambda theta to `grad` in place; returns the unweighted ||theta||^2 (the loss term
/// is lambda times it), on the device.
pub fn apply(grad: &Tensor, params: &Tensor, lambda: f64) -> Tensor {
    tch::no_grad(|| {
        let mut g = grad.shallow_clone();
        let _ = g.g_add_(&(params * (2.0 * lambda)));
        params.square().sum(params.kind())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_and_value_of_a_known_vector() {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let g = Tensor::from_slice(&[0.1f32, 0.1, 0.1]);
        let v = crate::hostread::scalar(&apply(&g, &p, 0.25));
        assert!((v - 5.25).abs() < 1e-6);
        let got = crate::hostread::vec_f32(&g).unwrap();
        assert_eq!(got, vec![0.1 + 0.5, 0.1 - 1.0, 0.1 + 0.25]);
        // Agrees with autograd of lambda ||p||^2.
        let q = p.copy().set_requires_grad(true);
        let auto = &Tensor::run_backward(&[(q.square().sum(tch::Kind::Float) * 0.25)], &[&q], false, false)[0];
        let g0 = Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
        let _ = apply(&g0, &p, 0.25);
        assert!((auto - g0).abs().max().double_value(&[]) < 1e-6);
    }
}
