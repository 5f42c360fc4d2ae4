//! Adversarial losses. Each takes the critic's raw outputs (logits for the BCE family) and
//! returns a scalar mean over the batch, so that averaging over ranks gives the global mean.

use crate::config::{LabelSmoothing, LossKind};
use tch::Tensor;

/// The BCE critic's (real, fake) targets; the article's smoothing values are 0.9 and 0.1.
pub fn bce_targets(smoothing: LabelSmoothing) -> (f64, f64) {
    match smoothing {
        LabelSmoothing::None => (1.0, 0.0),
        LabelSmoothing::OneSided => (0.9, 0.0),
        LabelSmoothing::TwoSided => (0.9, 0.1),
    }
}

/// Critic (discriminator) loss from its outputs on real and generated samples. Label
/// smoothing changes the BCE critic's targets only; the generator's loss is unchanged.
pub fn critic_loss(kind: LossKind, smoothing: LabelSmoothing, real_out: &Tensor, fake_out: &Tensor) -> Tensor {
    match kind {
        LossKind::Wgan => fake_out.mean(None) - real_out.mean(None),
        LossKind::Minimax | LossKind::NonSaturating => {
            let (t_real, t_fake) = bce_targets(smoothing);
            bce_with_logits(real_out, t_real) + bce_with_logits(fake_out, t_fake)
        }
        LossKind::Hinge => (-real_out + 1.0).relu().mean(None) + (fake_out + 1.0).relu().mean(None),
        LossKind::LeastSquares => ((real_out - 1.0).square().mean(None) + fake_out.square().mean(None)) * 0.5,
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
        LossKind::Hinge => -fake_out.mean(None),
        LossKind::LeastSquares => (fake_out - 1.0).square().mean(None) * 0.5,
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
    fn label_smoothing_targets_and_values() {
        assert_eq!(bce_targets(LabelSmoothing::None), (1.0, 0.0));
        assert_eq!(bce_targets(LabelSmoothing::OneSided), (0.9, 0.0));
        assert_eq!(bce_targets(LabelSmoothing::TwoSided), (0.9, 0.1));
        // At logit 0 both sigmoids are 1/2: every BCE term is ln 2 whatever the target.
        let z = t(&[0.0, 0.0]);
        for s in [LabelSmoothing::None, LabelSmoothing::OneSided, LabelSmoothing::TwoSided] {
            let v = critic_loss(LossKind::NonSaturating, s, &z, &z).double_value(&[]);
            assert!((v - 2.0 * 2f64.ln()).abs() < 1e-6, "{s:?}: {v}");
        }
        // Real logit x, fake logit y: softplus(x) - t_r x + softplus(y) - t_f y.
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let (x, y) = (2.0f64, -1.0f64);
        for (s, tr, tf) in [(LabelSmoothing::None, 1.0, 0.0), (LabelSmoothing::OneSided, 0.9, 0.0), (LabelSmoothing::TwoSided, 0.9, 0.1)] {
            let want = sp(x) - tr * x + sp(y) - tf * y;
            let got = critic_loss(LossKind::Minimax, s, &t(&[x as f32]), &t(&[y as f32])).double_value(&[]);
            assert!((got - want).abs() < 1e-6, "{s:?}: {got} vs {want}");
        }
        // The smoothed loss is minimised at sigmoid(x) = 0.9, i.e. x = ln 9, not at x -> infinity.
        let x = Tensor::from_slice(&[9f32.ln()]).set_requires_grad(true);
        let l = critic_loss(LossKind::NonSaturating, LabelSmoothing::OneSided, &x, &t(&[-50.0]));
        let g = Tensor::run_backward(&[l], &[&x], false, false)[0].double_value(&[0]);
        assert!(g.abs() < 1e-6, "{g}");
    }

    #[test]
    fn hinge_and_least_squares_values() {
        let real = t(&[2.0, 0.5, -1.0]);
        let fake = t(&[-2.0, 0.0, 1.0]);
        // Hinge: mean(relu(1 - r)) = (0 + 0.5 + 2)/3, mean(relu(1 + f)) = (0 + 1 + 2)/3.
        let h = critic_loss(LossKind::Hinge, LabelSmoothing::None, &real, &fake).double_value(&[]);
        assert!((h - (2.5 + 3.0) / 3.0).abs() < 1e-6, "{h}");
        assert!((generator_loss(LossKind::Hinge, &fake).double_value(&[]) - (1.0 / 3.0)).abs() < 1e-6);
        // LS: 0.5 mean((r - 1)^2) + 0.5 mean(f^2) = 0.5 (1 + 0.25 + 4)/3 + 0.5 (4 + 0 + 1)/3.
        let ls = critic_loss(LossKind::LeastSquares, LabelSmoothing::None, &real, &fake).double_value(&[]);
        assert!((ls - (0.5 * 5.25 / 3.0 + 0.5 * 5.0 / 3.0)).abs() < 1e-6, "{ls}");
        // Generator: 0.5 mean((f - 1)^2) = 0.5 (9 + 1 + 0)/3.
        let gl = generator_loss(LossKind::LeastSquares, &fake).double_value(&[]);
        assert!((gl - 0.5 * 10.0 / 3.0).abs() < 1e-6, "{gl}");
    }

    #[test]
    fn wgan_losses() {
        let real = t(&[1.0, 3.0]);
        let fake = t(&[-1.0, 0.0]);
        assert_eq!(critic_loss(LossKind::Wgan, LabelSmoothing::None, &real, &fake).double_value(&[]), -2.5);
        assert_eq!(generator_loss(LossKind::Wgan, &fake).double_value(&[]), 0.5);
        assert_eq!(wasserstein_estimate(&real, &fake).double_value(&[]), 2.5);
    }
}
