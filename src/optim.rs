//! The optimizers (Adam, PyTorch's formula step for step, and plain SGD) over a flat
//! parameter buffer, global-norm gradient clipping and element-wise value clipping. Everything
//! stays on the device: a step takes a 0/1 condition (the update was not skipped) and leaves
//! the parameters, moments and step count exactly as they were where it is false, and
//! clipping is a device-side coefficient, so that an update never waits for the device.

use crate::config::{OptimKind, OptimizerSettings};
use tch::{Kind, Tensor};

/// How a step turns a gradient into a parameter change.
pub enum Rule {
    /// Adam with its two moment buffers (laid out like the parameters).
    Adam { beta1: f64, beta2: f64, eps: f64, exp_avg: Tensor, exp_avg_sq: Tensor },
    /// Plain SGD without momentum: params -= lr * grad. Its step scales with the gradient, so
    /// norm clipping bounds it (Adam's does not).
    Sgd,
}

/// One network's optimizer.
pub struct Optimizer {
    pub rule: Rule,
    pub lr: f64,
    /// Steps taken, on the device (float64, exact): Adam's bias correction reads it, since the
    /// host does not know between sync steps which updates were skipped.
    step_count: Tensor,
}

impl Optimizer {
    pub fn adam(params: &Tensor, lr: f64, beta1: f64, beta2: f64, eps: f64) -> Self {
        let rule = Rule::Adam { beta1, beta2, eps, exp_avg: params.zeros_like(), exp_avg_sq: params.zeros_like() };
        Optimizer { rule, lr, step_count: Tensor::zeros([], (Kind::Double, params.device())) }
    }

    pub fn sgd(params: &Tensor, lr: f64) -> Self {
        Optimizer { rule: Rule::Sgd, lr, step_count: Tensor::zeros([], (Kind::Double, params.device())) }
    }

    /// The optimizer a network's table names (`critic.optimizer`, ...), for `params`.
    pub fn from_config(o: &OptimizerSettings, params: &Tensor) -> Self {
        match o.kind {
            OptimKind::Adam => Optimizer::adam(params, o.lr, o.beta1, o.beta2, o.eps),
            OptimKind::Sgd => Optimizer::sgd(params, o.lr),
        }
    }

    /// Sets the count of steps taken (from a checkpoint), on the device.
    pub fn set_step_count(&mut self, n: u64) {
        let _ = self.step_count.fill_(n as f64);
    }

    /// The state a checkpoint keeps, named: Adam's moments ("exp_avg", "exp_avg_sq"); nothing
    /// for SGD. Views of the live buffers, so that loading writes through them.
    pub fn state(&self) -> Vec<(&'static str, Tensor)> {
        match &self.rule {
            Rule::Adam { exp_avg, exp_avg_sq, .. } => vec![("exp_avg", exp_avg.shallow_clone()), ("exp_avg_sq", exp_avg_sq.shallow_clone())],
            Rule::Sgd => Vec::new(),
        }
    }

    /// One update of `params` (in place) with gradient `grad`, as torch.optim.Adam (or SGD
    /// without momentum) does it, where `apply` (a one-element bool tensor) is true. Where it
    /// is false, parameters, moments and step count keep their exact values.
    pub fn step(&mut self, params: &Tensor, grad: &Tensor, apply: &Tensor) {
        tch::no_grad(|| {
            let _ = self.step_count.g_add_(&apply.to_kind(Kind::Double));
            let new_params = match &self.rule {
                Rule::Sgd => params - grad * self.lr,
                Rule::Adam { beta1, beta2, eps, exp_avg, exp_avg_sq } => {
                    let m = exp_avg.lerp(grad, 1.0 - beta1);
                    let v = exp_avg_sq * *beta2 + grad.square() * (1.0 - beta2);
                    // Bias corrections from the device's step count; 0-dim, so float32 stays float32.
                    let bias1 = Tensor::pow_scalar(*beta1, &self.step_count).neg() + 1.0;
                    let bias2_sqrt = (Tensor::pow_scalar(*beta2, &self.step_count).neg() + 1.0).sqrt();
                    let denom = v.sqrt() / bias2_sqrt + *eps;
                    let p = params.addcdiv(&(&m * (bias1.reciprocal() * -self.lr)), &denom);
                    select_into(exp_avg, apply, &m);
                    select_into(exp_avg_sq, apply, &v);
                    p
                }
            };
            select_into(params, apply, &new_params);
        })
    }
}

/// `dst = apply ? new : dst`, in place, with no arithmetic on the kept values (a masked
/// multiply would turn -0 into +0 and NaN * 0 into NaN).
pub fn select_into(dst: &Tensor, apply: &Tensor, new: &Tensor) {
    tch::no_grad(|| {
        let _ = new.where_self_out(dst, apply, dst);
    })
}

/// Outcome of clipping one network's gradient, read from the device at a sync step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipReport {
    pub norm_before: f64,
    pub norm_after: f64,
    pub clipped: bool,
}

/// Clipping's figures, on the device.
pub struct DeviceClip {
    pub norm_before: Tensor,
    pub norm_after: Tensor,
    /// 1.0 when the gradient was rescaled, else 0.0.
    pub clipped: Tensor,
}

/// Rescales `grad` in place by max_norm / (||grad|| + 1e-6) when its global L2 norm exceeds
/// `max_norm` (0 disables), as torch.nn.utils.clip_grad_norm_ does, on the device.
pub fn clip_global_norm(grad: &Tensor, max_norm: f64) -> DeviceClip {
    tch::no_grad(|| {
        let norm = grad.norm();
        if max_norm <= 0.0 {
            return DeviceClip { norm_after: norm.shallow_clone(), clipped: norm.zeros_like(), norm_before: norm };
        }
        let over = norm.gt(max_norm);
        let coef = (&norm + 1e-6).reciprocal() * max_norm;
        let coef = coef.where_self(&over, &coef.ones_like());
        let mut g = grad.shallow_clone();
        let _ = g.g_mul_(&coef);
        DeviceClip { norm_after: &norm * &coef, clipped: over.to_kind(Kind::Float), norm_before: norm }
    })
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
    use crate::hostread::{scalar, vec_f32};

    fn yes() -> Tensor {
        Tensor::from(true)
    }

    #[test]
    fn value_clipping_of_a_known_gradient() {
        let g = Tensor::from_slice(&[3.0f32, -0.2, -4.0, 0.5]);
        clip_value(&g, 0.5);
        assert_eq!(vec_f32(&g).unwrap(), vec![0.5, -0.2, -0.5, 0.5]);
        clip_value(&g, 0.0);
        assert_eq!(vec_f32(&g).unwrap(), vec![0.5, -0.2, -0.5, 0.5]);
    }

    #[test]
    fn sgd_step_is_lr_times_gradient() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]);
        let mut opt = Optimizer::sgd(&p, 0.5);
        opt.step(&p, &Tensor::from_slice(&[2.0f32, -4.0]), &yes());
        assert_eq!(vec_f32(&p).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn clipping_a_known_gradient() {
        let g = Tensor::from_slice(&[3.0f32, 4.0]);
        let r = clip_global_norm(&g, 1.0);
        assert_eq!(scalar(&r.clipped), 1.0);
        assert!((scalar(&r.norm_before) - 5.0).abs() < 1e-6);
        // The coefficient is max_norm / (norm + 1e-6), so the norm after is just under 1.
        assert!((scalar(&r.norm_after) - 5.0 / (5.0 + 1e-6)).abs() < 1e-6);
        let v = vec_f32(&g).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6, "{v:?}");
        // Under the threshold nothing changes, bit for bit.
        let g = Tensor::from_slice(&[0.3f32, 0.4]);
        let r = clip_global_norm(&g, 1.0);
        assert_eq!(scalar(&r.clipped), 0.0);
        assert_eq!(vec_f32(&g).unwrap(), vec![0.3, 0.4]);
        assert_eq!(scalar(&r.norm_before), scalar(&r.norm_after));
        assert_eq!(scalar(&clip_global_norm(&Tensor::from_slice(&[30.0f32]), 0.0).clipped), 0.0);
    }

    /// Adam against an independent scalar implementation of Kingma & Ba with PyTorch's
    /// placement of eps, over several steps with changing gradients.
    #[test]
    fn adam_matches_reference_recurrence() {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let mut opt = Optimizer::adam(&p, 0.1, 0.5, 0.9, 1e-8);
        let mut reference = [1.0f64, -2.0, 0.5];
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for t in 1..=5 {
            let g: Vec<f32> = reference.iter().map(|x| (2.0 * x + t as f64) as f32).collect();
            opt.step(&p, &Tensor::from_slice(&g), &yes());
            for i in 0..3 {
                let gi = g[i] as f64;
                m[i] = 0.5 * m[i] + 0.5 * gi;
                v[i] = 0.9 * v[i] + 0.1 * gi * gi;
                let mh = m[i] / (1.0 - 0.5f64.powi(t));
                let vh = v[i] / (1.0 - 0.9f64.powi(t));
                reference[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = vec_f32(&p).unwrap();
        for i in 0..3 {
            assert!((got[i] as f64 - reference[i]).abs() < 1e-5, "{got:?} vs {reference:?}");
        }
        assert_eq!(scalar(&opt.step_count), 5.0);
    }

    /// A step with `apply` false leaves parameters, both moments and the step count exactly
    /// as they were (bit for bit, -0.0 included, whatever the gradient holds), and the next
    /// applied step equals that of an optimizer that never saw the skipped one.
    #[test]
    fn a_skipped_step_changes_nothing() {
        let init = [1.0f32, -0.0, 0.25];
        let p = Tensor::from_slice(&init);
        let q = Tensor::from_slice(&init);
        let mut skipping = Optimizer::adam(&p, 0.1, 0.5, 0.9, 1e-8);
        let mut plain = Optimizer::adam(&q, 0.1, 0.5, 0.9, 1e-8);
        let g1 = Tensor::from_slice(&[0.5f32, -1.0, 2.0]);
        skipping.step(&p, &g1, &yes());
        plain.step(&q, &g1, &yes());
        let bits = |t: &Tensor| vec_f32(t).unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let moments = |o: &Optimizer| o.state().iter().map(|(_, t)| bits(t)).collect::<Vec<_>>();
        let before = (bits(&p), moments(&skipping), scalar(&skipping.step_count));
        for bad in [f32::NAN, f32::INFINITY, 1e30] {
            skipping.step(&p, &Tensor::from_slice(&[bad, 3.0, -7.0]), &Tensor::from(false));
            assert_eq!((bits(&p), moments(&skipping), scalar(&skipping.step_count)), before, "gradient {bad}");
        }
        let g2 = Tensor::from_slice(&[-0.25f32, 0.75, 1.5]);
        skipping.step(&p, &g2, &yes());
        plain.step(&q, &g2, &yes());
        assert_eq!(bits(&p), bits(&q));
        assert_eq!(moments(&skipping), moments(&plain));
        // SGD as well.
        let s = Tensor::from_slice(&[-0.0f32, 2.0]);
        let mut sgd = Optimizer::sgd(&s, 1.0);
        sgd.step(&s, &Tensor::from_slice(&[f32::NAN, 1.0]), &Tensor::from(false));
        assert_eq!(bits(&s), vec![(-0.0f32).to_bits(), 2.0f32.to_bits()]);
    }
}
