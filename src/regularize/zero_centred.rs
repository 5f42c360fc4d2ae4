//! Zero-centred gradient penalties (Mescheder et al. 2018): R1 = E[||grad_x D(x)||^2] on real
//! data, R2 the same on generated data. The configured weight plays the role of the paper's
//! gamma / 2.

use super::gradient_penalty::{input_gradient_norms, Penalty};
use tch::Tensor;

/// E[||grad_x D(x)||^2] at the given points (real for R1, fake for R2).
pub fn zero_centred(critic: impl Fn(&Tensor) -> Tensor, x: &Tensor) -> Penalty {
    let norms = input_gradient_norms(critic, x);
    let value = norms.square().mean(None);
    Penalty { value, mean_grad_norm: norms.detach().mean(None) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regularize::test_support::check_param_gradient;
    use tch::{Device, Kind};

    /// D(x) = sum_j a_j x_j^2 / 2: grad_x D = a * x, so R = mean_i sum_j a_j^2 x_ij^2 and
    /// dR/da_j = 2 a_j mean_i x_ij^2.
    #[test]
    fn quadratic_critic_closed_form() {
        let opts = (Kind::Double, Device::Cpu);
        let x = Tensor::from_slice(&[1.0f64, 2.0, -1.0, 0.5]).view([2, 2]);
        let a = Tensor::from_slice(&[3.0f64, -0.5]).set_requires_grad(true);
        let p = zero_centred(|x| (x.square() * &a).sum_dim_intlist([1i64].as_slice(), false, Kind::Double) * 0.5, &x);
        // Sample 1: (3*1, -0.5*2) -> 9 + 1 = 10; sample 2: (3*-1, -0.5*0.5) -> 9 + 0.0625.
        let want = (10.0 + 9.0625) / 2.0;
        assert!((p.value.double_value(&[]) - want).abs() < 1e-12);
        let g = &Tensor::run_backward(&[&p.value], &[&a], false, false)[0];
        assert!((g.double_value(&[0]) - 2.0 * 3.0 * (1.0 + 1.0) / 2.0).abs() < 1e-12);
        assert!((g.double_value(&[1]) - 2.0 * -0.5 * (4.0 + 0.25) / 2.0).abs() < 1e-12);
        let _ = opts;
    }

    #[test]
    fn r1_and_r2_match_finite_differences() {
        check_param_gradient(|critic, real, _fake, _eps| zero_centred(critic, real).value, 1.0);
        check_param_gradient(|critic, _real, fake, _eps| zero_centred(critic, fake).value, 1.0);
    }
}
