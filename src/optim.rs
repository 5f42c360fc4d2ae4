//! Adam over a flat parameter buffer (PyTorch's formula, step for step), plain SGD as an
//! option, global-norm gradient clipping and element-wise value clipping.

use crate::config::OptimKind;
use tch::Tensor;

/// Adam, or plain SGD when `kind` is `Sgd` (the moments are then unused and stay zero).
pub struct Adam {
    pub kind: OptimKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub steps: u64,
}

impl Adam {
    pub fn new(params: &Tensor, lr: f64, beta1: f64, beta2: f64, eps: f64) -> Self {
        Adam { kind: OptimKind::Adam, lr, beta1, beta2, eps, exp_avg: params.zeros_like(), exp_avg_sq: params.zeros_like(), steps: 0 }
    }

    /// Plain SGD: params -= lr * grad.
    pub fn sgd(params: &Tensor, lr: f64) -> Self {
        Adam { kind: OptimKind::Sgd, ..Adam::new(params, lr, 0.0, 0.0, 1.0) }
    }

    /// One update of `params` (in place) with gradient `grad`, as torch.optim.Adam (or SGD
    /// without momentum) does it.
    pub fn step(&mut self, params: &Tensor, grad: &Tensor) {
        let mut params = params.shallow_clone();
        tch::no_grad(|| {
            self.steps += 1;
            if self.kind == OptimKind::Sgd {
                let _ = params.g_add_(&(grad * -self.lr));
                return;
            }
            let t = self.steps as i32;
            let _ = self.exp_avg.lerp_(grad, 1.0 - self.beta1);
            let _ = self.exp_avg_sq.g_mul_scalar_(self.beta2).g_add_(&(grad.square() * (1.0 - self.beta2)));
            let bias1 = 1.0 - self.beta1.powi(t);
            let bias2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
            let denom = (self.exp_avg_sq.sqrt() / bias2_sqrt) + self.eps;
            let _ = params.addcdiv_(&(&self.exp_avg * (-self.lr / bias1)), &denom);
        })
    }
}

/// Outcome of clipping one network's gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipReport {
    pub norm_before: f64,
    pub norm_after: f64,
    pub clipped: bool,
}

/// Rescales `grad` in place to `max_norm / ||grad||` times itself when its global L2 norm
/// exceeds `max_norm` (0 disables). Same coefficient as torch.nn.utils.clip_grad_norm_.
pub fn clip_global_norm(grad: &Tensor, max_norm: f64) -> ClipReport {
    let norm = grad.norm().double_value(&[]);
    if max_norm > 0.0 && norm > max_norm {
        let coef = max_norm / (norm + 1e-6);
        let mut grad = grad.shallow_clone();
        tch::no_grad(|| {
            let _ = grad.g_mul_scalar_(coef);
        });
        ClipReport { norm_before: norm, norm_after: norm * coef, clipped: true }
    } else {
        ClipReport { norm_before: norm, norm_after: norm, clipped: false }
    }
}

/// Clamps every element of `grad` in place to [-v, v] (0 disables).
pub fn clip_value(grad: &Tensor, v: f64) {
    if v <= 0.0 {
        return;
    }
    tch::no_grad(|| {
        let mut g = grad.shallow_clone();
        let _ = g.clamp_(-v, v);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_clipping_of_a_known_gradient() {
        let g = Tensor::from_slice(&[3.0f32, -0.2, -4.0, 0.5]);
        clip_value(&g, 0.5);
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![0.5, -0.2, -0.5, 0.5]);
        clip_value(&g, 0.0);
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![0.5, -0.2, -0.5, 0.5]);
    }

    #[test]
    fn sgd_step_is_lr_times_gradient() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]);
        let mut opt = Adam::sgd(&p, 0.5);
        opt.step(&p, &Tensor::from_slice(&[2.0f32, -4.0]));
        assert_eq!(Vec::<f32>::try_from(&p).unwrap(), vec![0.0, 0.0]);
        assert_eq!(opt.steps, 1);
    }

    #[test]
    fn clipping_a_known_gradient() {
        let g = Tensor::from_slice(&[3.0f32, 4.0]);
        let r = clip_global_norm(&g, 1.0);
        assert!(r.clipped);
        assert!((r.norm_before - 5.0).abs() < 1e-6);
        let v: Vec<f32> = Vec::try_from(&g).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6, "{v:?}");
        // Under the threshold nothing changes.
        let g = Tensor::from_slice(&[0.3f32, 0.4]);
        let r = clip_global_norm(&g, 1.0);
        assert!(!r.clipped);
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![0.3, 0.4]);
        assert!(!clip_global_norm(&Tensor::from_slice(&[30.0f32]), 0.0).clipped);
    }

    /// Adam against an independent scalar implementation of Kingma & Ba with PyTorch's
    /// placement of eps, over several steps with changing gradients.
    #[test]
    fn adam_matches_reference_recurrence() {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let mut opt = Adam::new(&p, 0.1, 0.5, 0.9, 1e-8);
        let mut reference = [1.0f64, -2.0, 0.5];
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for t in 1..=5 {
            let g: Vec<f32> = reference.iter().map(|x| (2.0 * x + t as f64) as f32).collect();
            opt.step(&p, &Tensor::from_slice(&g));
            for i in 0..3 {
                let gi = g[i] as f64;
                m[i] = 0.5 * m[i] + 0.5 * gi;
                v[i] = 0.9 * v[i] + 0.1 * gi * gi;
                let mh = m[i] / (1.0 - 0.5f64.powi(t));
                let vh = v[i] / (1.0 - 0.9f64.powi(t));
                reference[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f32> = Vec::try_from(&p).unwrap();
        for i in 0..3 {
            assert!((got[i] as f64 - reference[i]).abs() < 1e-5, "{got:?} vs {reference:?}");
        }
        assert_eq!(opt.steps, 5);
    }
}
