//! The original WGAN's Lipschitz constraint (Arjovsky et al. 2017): after every critic step,
//! every critic parameter is clamped to [-c, c]. Parameters are identical on every rank, so
//! every rank clamps identically.

use tch::Tensor;

/// Clamps `params` in place to [-c, c] (c > 0) where `apply` (a one-element bool tensor:
/// the step was taken) is true.
pub fn clamp(params: &Tensor, c: f64, apply: &Tensor) {
    tch::no_grad(|| crate::optim::select_into(params, apply, &params.clamp(-c, c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_a_known_vector() {
        let p = Tensor::from_slice(&[0.5f32, -0.02, 0.01, -3.0]);
        clamp(&p, 0.01, &Tensor::from(false));
        assert_eq!(crate::hostread::vec_f32(&p).unwrap(), vec![0.5, -0.02, 0.01, -3.0]);
        clamp(&p, 0.01, &Tensor::from(true));
        assert_eq!(crate::hostread::vec_f32(&p).unwrap(), vec![0.01, -0.01, 0.01, -0.01]);
    }
}
