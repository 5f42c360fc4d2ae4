//! Regularisers added to the critic or generator loss, one file each: gradient penalties
//! (two-sided, one-sided, zero-centred R1/R2), feature matching, historical averaging, L2,
//! and WGAN weight clipping.

pub mod feature_matching;
pub mod gradient_penalty;
pub mod historical_average;
pub mod l2;
pub mod one_sided;
pub mod weight_clip;
pub mod zero_centred;

use crate::config::PenaltyKind;
pub use gradient_penalty::Penalty;
use tch::Tensor;

/// The configured gradient penalty. `eps` (interpolation weights, shape (B, 1, 1, 1)) is
/// drawn lazily, only by the penalties that interpolate. `None` for `PenaltyKind::None`.
pub fn penalty(
    kind: PenaltyKind,
    critic: impl Fn(&Tensor) -> Tensor,
    real: &Tensor,
    fake: &Tensor,
    eps: impl FnOnce() -> Tensor,
) -> Option<Penalty> {
    match kind {
        PenaltyKind::TwoSided => Some(gradient_penalty::two_sided(critic, real, fake, &eps())),
        PenaltyKind::OneSided => Some(one_sided::one_sided(critic, real, fake, &eps())),
        PenaltyKind::R1 => Some(zero_centred::zero_centred(critic, real)),
        PenaltyKind::R2 => Some(zero_centred::zero_centred(critic, fake)),
        PenaltyKind::None => None,
    }
}

/// The weight of a lazily applied penalty at critic update `critic_step`: k * lambda every
/// k-th update (so that its average weight stays lambda), else 0.
pub fn lazy_weight(lambda: f64, every: u64, critic_step: u64) -> f64 {
    if every <= 1 {
        lambda
    } else if critic_step.is_multiple_of(every) {
        lambda * every as f64
    } else {
        0.0
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use tch::{Device, Kind, Tensor};

    /// Checks a penalty's parameter gradient (through the double backward) against central
    /// finite differences in float64, on a small conv critic with leaky ReLU and a squared
    /// output (a smooth nonlinearity, so that second-order terms matter). `scale` multiplies
    /// the output weights (to put one-sided penalties in their active region).
    pub fn check_param_gradient(
        penalty: impl Fn(&dyn Fn(&Tensor) -> Tensor, &Tensor, &Tensor, &Tensor) -> Tensor,
        scale: f64,
    ) {
        let opts = (Kind::Double, Device::Cpu);
        tch::manual_seed(3);
        let w1 = (Tensor::randn([3, 1, 3, 3], opts) * 0.5).set_requires_grad(true);
        let w2 = (Tensor::randn([1, 3 * 3 * 3], opts) * (0.3 * scale)).set_requires_grad(true);
        let slope = Tensor::from_slice(&[0.2f64]);
        let real = Tensor::randn([4, 1, 6, 6], opts);
        let fake = Tensor::randn([4, 1, 6, 6], opts);
        let eps = Tensor::rand([4, 1, 1, 1], opts);
        let value = |w1: &Tensor, w2: &Tensor| {
            let critic = |x: &Tensor| {
                x.conv2d(w1, None::<Tensor>, [2, 2], [1, 1], [1, 1], 1).prelu(&slope).flatten(1, -1).matmul(&w2.tr()).view([-1]).square()
            };
            penalty(&critic, &real, &fake, &eps)
        };
        let p = value(&w1, &w2);
        assert!(p.double_value(&[]) > 1e-3, "the penalty should be active in this test: {}", p.double_value(&[]));
        let analytic = Tensor::run_backward(&[&p], &[&w1, &w2], false, false);
        let h = 1e-6;
        for (which, param) in [(0usize, &w1), (1, &w2)] {
            let flat = param.detach().flatten(0, -1);
            for i in [0i64, 4, 7, flat.numel() as i64 - 1] {
                let mut vals = [0.0; 2];
                for (k, sign) in [1.0, -1.0].iter().enumerate() {
                    let shifted = flat.copy();
                    let _ = shifted.get(i).g_add_scalar_(sign * h);
                    let shifted = shifted.view(param.size().as_slice());
                    let (a, b) = if which == 0 { (shifted, w2.detach()) } else { (w1.detach(), shifted) };
                    vals[k] = value(&a, &b).double_value(&[]);
                }
                let numeric = (vals[0] - vals[1]) / (2.0 * h);
                let got = analytic[which].flatten(0, -1).double_value(&[i]);
                // Central differences in f64 with h = 1e-6: truncation ~h^2, rounding ~1e-16/h.
                assert!((got - numeric).abs() <= 1e-6 * numeric.abs().max(1.0), "param {which}[{i}]: {got} vs {numeric}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_weight_applies_every_kth_step_scaled_by_k() {
        assert_eq!(lazy_weight(10.0, 1, 7), 10.0);
        let w: Vec<f64> = (0..8).map(|s| lazy_weight(10.0, 4, s)).collect();
        assert_eq!(w, vec![40.0, 0.0, 0.0, 0.0, 40.0, 0.0, 0.0, 0.0]);
        // Same total weight over a multiple of k steps.
        assert_eq!(w.iter().sum::<f64>(), 8.0 * 10.0);
    }
}
