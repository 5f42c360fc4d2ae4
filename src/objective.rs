//! Adversarial losses. Each takes the critic's raw outputs (logits for the BCE family) and
//! returns a scalar mean over the batch, so that averaging over ranks gives the global mean.

use crate::config::LossKind;
use tch::Tensor;

/// Critic (discriminator) loss from its outputs on real and generated samples.
pub fn critic_loss(kind: LossKind, real_out: &Tensor, fake_out: &Tensor) -> Tensor {
    match kind {
        LossKind::Wgan => fake_out.mean(None) - real_out.mean(None),
        LossKind::Minimax | LossKind::NonSaturating => bce_with_logits(real_out, 1.0) + bce_with_logits(fake_out, 0.0),
    }
}

/// Generator loss from the critic's outputs on generated samples.
pub fn generator_loss(kind: LossKind, fake_out: &Tensor) -> Tensor {
    match kind {
        LossKind::Wgan => -fake_out.mean(None),
        // Minimise log(1 - sigmoid(x)) = -softplus(x): saturates when the critic wins.
        LossKind::Minimax => -fake_out.softplus().mean(None),
        // Minimise -log sigmoid(x) = softplus(-x).
        LossKind::NonSaturating => (-fake_out).softplus().mean(None),
    }
}

/// Mean binary cross-entropy of logits `x` against a constant target `t`:
/// softplus(x) - t x, which is -[t log s(x) + (1 - t) log(1 - s(x))], stable for any x.
pub fn bce_with_logits(x: &Tensor, target: f64) -> Tensor {
    (x.softplus() - x * target).mean(None)
}

/// Wasserstein estimate E[D(real)] - E[D(fake)] (reported for every loss kind).
pub fn wasserstein_estimate(real_out: &Tensor, fake_out: &Tensor) -> Tensor {
    real_out.mean(None) - fake_out.mean(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn bce_matches_its_definition() {
        let x = [-3.0f32, -0.5, 0.0, 2.0, 30.0];
        for target in [0.0, 0.1, 0.9, 1.0] {
            let want: f64 = x
                .iter()
                .map(|&v| {
                    let s = 1.0 / (1.0 + (-(v as f64)).exp());
                    let ls = if s > 0.0 { s.ln() } else { f64::NEG_INFINITY };
                    let l1s = (1.0 - s).max(1e-300).ln();
                    -(target * ls + (1.0 - target) * l1s)
                })
                .sum::<f64>()
                / x.len() as f64;
            let got = bce_with_logits(&t(&x), target).double_value(&[]);
            // The f64 reference loses precision at x=30 only for 1 - s; target 1 makes that term vanish.
            let tol = if target == 1.0 { 1e-5 } else { 1e-4 * want.abs().max(1.0) };
            assert!((got - want).abs() < tol, "target {target}: {got} vs {want}");
        }
    }

    #[test]
    fn minimax_generator_gradient_vanishes_where_non_saturating_does_not() {
        // With the critic confident that fakes are fake (logit -10), d loss / d logit:
        // minimax -sigmoid(x) ~ -4.5e-5, non-saturating -(1 - sigmoid(x)) ~ -1.
        let x = Tensor::from_slice(&[-10.0f32]).set_requires_grad(true);
        let g_mm = Tensor::run_backward(&[generator_loss(LossKind::Minimax, &x)], &[&x], false, false)[0].double_value(&[0]);
        let g_ns = Tensor::run_backward(&[generator_loss(LossKind::NonSaturating, &x)], &[&x], false, false)[0].double_value(&[0]);
        let s = 1.0 / (1.0 + 10f64.exp());
        assert!((g_mm + s).abs() < 1e-9, "{g_mm}");
        assert!((g_ns + (1.0 - s)).abs() < 1e-6, "{g_ns}");
    }

    #[test]
    fn wgan_losses() {
        let real = t(&[1.0, 3.0]);
        let fake = t(&[-1.0, 0.0]);
        assert_eq!(critic_loss(LossKind::Wgan, &real, &fake).double_value(&[]), -2.5);
        assert_eq!(generator_loss(LossKind::Wgan, &fake).double_value(&[]), 0.5);
        assert_eq!(wasserstein_estimate(&real, &fake).double_value(&[]), 2.5);
        let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    }
}
