//! The one-sided gradient penalty E[max(0, ||grad_x D(x_hat)|| - 1)^2] at the WGAN-GP
//! interpolates (Gulrajani et al. 2017, appendix; Petzka et al. 2018): it only penalises
//! gradients steeper than 1, leaving the critic free below the Lipschitz bound.

use super::gradient_penalty::{input_gradient_norms, interpolates, Penalty};
use tch::Tensor;

pub fn one_sided(critic: impl Fn(&Tensor) -> Tensor, real: &Tensor, fake: &Tensor, eps: &Tensor) -> Penalty {
    let norms = input_gradient_norms(critic, &interpolates(real, fake, eps));
    let value = (&norms - 1.0).relu().square().mean(None);
    Penalty { value, mean_grad_norm: norms.detach().mean(None) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regularize::test_support::check_param_gradient;
    use tch::{Device, Kind};

    /// Linear critic D(x) = w.x: the input gradient is w everywhere, so the penalty is
    /// max(0, ||w|| - 1)^2, zero (with zero gradient) when ||w|| <= 1.
    #[test]
    fn linear_critic_closed_form() {
        let opts = (Kind::Double, Device::Cpu);
        let real = Tensor::randn([5, 3], opts);
        let fake = Tensor::randn([5, 3], opts);
        let eps = Tensor::rand([5, 1], opts);
        for (wv, want) in [([2.0f64, 0.0, 0.0], 1.0), ([0.3, 0.4, 0.0], 0.0)] {
            let w = Tensor::from_slice(&wv).set_requires_grad(true);
            let p = one_sided(|x| x.matmul(&w), &real, &fake, &eps);
            assert!((p.value.double_value(&[]) - want).abs() < 1e-12);
            let g = &Tensor::run_backward(&[&p.value], &[&w], false, false)[0];
            // d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = (2, 0, 0) for w = (2, 0, 0).
            let want_g = if want > 0.0 { 2.0 } else { 0.0 };
            assert!((g.double_value(&[0]) - want_g).abs() < 1e-12, "{g:?}");
        }
    }

    #[test]
    fn conv_critic_matches_finite_differences() {
        check_param_gradient(|critic, real, fake, eps| one_sided(critic, real, fake, eps).value, 1.5);
    }
}
