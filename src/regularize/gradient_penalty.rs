//! The WGAN-GP gradient penalty: E[(||grad_x D(x_hat)||_2 - 1)^2] at x_hat = eps real +
//! (1 - eps) fake. The input gradient is taken with create_graph, so the penalty's
//! second-order terms reach the critic's parameter gradients.

use tch::Tensor;

pub struct Penalty {
    /// The mean penalty (unweighted).
    pub value: Tensor,
    /// Mean input-gradient norm at the interpolates (for monitoring).
    pub mean_grad_norm: Tensor,
}

/// Per-sample norms ||grad_x D(x)||_2 at the points `x`, differentiable in the critic's
/// parameters (create_graph): the shared core of every gradient penalty.
pub fn input_gradient_norms(critic: impl Fn(&Tensor) -> Tensor, x: &Tensor) -> Tensor {
    let x = x.detach().set_requires_grad(true);
    let out = critic(&x);
    let grad = &Tensor::run_backward(&[out.sum(None)], &[&x], true, true)[0];
    grad.flatten(1, -1).norm_scalaropt_dim(2, [1], false)
}

/// The random interpolates eps real + (1 - eps) fake.
pub fn interpolates(real: &Tensor, fake: &Tensor, eps: &Tensor) -> Tensor {
    eps * real + eps.neg().g_add_scalar(1.0) * fake
}

/// `critic` maps a batch to one output per sample; `eps` has shape (B, 1, ..., 1).
pub fn two_sided(critic: impl Fn(&Tensor) -> Tensor, real: &Tensor, fake: &Tensor, eps: &Tensor) -> Penalty {
    let norms = input_gradient_norms(critic, &interpolates(real, fake, eps));
    let value = (&norms - 1.0).square().mean(None);
    Penalty { value, mean_grad_norm: norms.detach().mean(None) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn opts() -> (Kind, Device) {
        (Kind::Double, Device::Cpu)
    }

    /// For a linear critic D(x) = w.x + b the input gradient is w for every x, so the penalty
    /// is (||w|| - 1)^2 and its gradient with respect to w is 2 (||w|| - 1) w / ||w||.
    #[test]
    fn linear_critic_closed_form() {
        let w = Tensor::from_slice(&[0.3f64, -1.2, 0.5, 2.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.7f64]).set_requires_grad(true);
        let real = Tensor::randn([6, 4], opts());
        let fake = Tensor::randn([6, 4], opts());
        let eps = Tensor::rand([6, 1], opts());
        let p = two_sided(|x| x.matmul(&w) + &b, &real, &fake, &eps);
        let nw = (0.09f64 + 1.44 + 0.25 + 4.0).sqrt();
        assert!((p.value.double_value(&[]) - (nw - 1.0).powi(2)).abs() < 1e-12);
        assert!((p.mean_grad_norm.double_value(&[]) - nw).abs() < 1e-12);
        let grads = Tensor::run_backward(&[&p.value], &[&w, &b], false, false);
        for (i, wi) in [0.3f64, -1.2, 0.5, 2.0].iter().enumerate() {
            let want = 2.0 * (nw - 1.0) * wi / nw;
            assert!((grads[0].double_value(&[i as i64]) - want).abs() < 1e-12);
        }
        // The bias does not change the input gradient: the penalty does not depend on it
        // (autograd reports no gradient at all, which the trainer treats as zero).
        assert!(!grads[1].defined() || grads[1].double_value(&[0]) == 0.0);
    }

    /// A small conv critic with leaky ReLU: the penalty's parameter gradient (through the
    /// double backward) against central finite differences in float64.
    #[test]
    fn conv_critic_matches_finite_differences() {
        crate::regularize::test_support::check_param_gradient(|critic, real, fake, eps| two_sided(critic, real, fake, eps).value, 1.0);
    }
}
