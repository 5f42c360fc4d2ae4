//! The original WGAN's Lipschitz constraint (Arjovsky et al. 2017): after every critic step,
//! every critic parameter is clamped to [-c, c]. Parameters are identical on every rank, so
//! every rank clamps identically.

use tch::Tensor;

/// Clamps `params` in place to [-c, c] (c > 0).
pub fn clamp(params: &Tensor, c: f64) {
    tch::no_grad(|| {
        let mut p = params.shallow_clone();
        let _ = p.clamp_(-c, c);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_a_known_vector() {
        let p = Tensor::from_slice(&[0.5f32, -0.02, 0.01, -3.0]);
        clamp(&p, 0.01);
        assert_eq!(Vec::<f32>::try_from(&p).unwrap(), vec![0.01, -0.01, 0.01, -0.01]);
    }
}
