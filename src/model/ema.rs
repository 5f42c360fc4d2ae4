//! Exponential moving average of the generator's weights: after every generator update,
//! ema <- beta ema + (1 - beta) theta, with beta = 0.5^(1/half-life). It is a function of the
//! parameter sequence only, so it is identical on every rank; the checkpoint keeps it.

use tch::Tensor;

pub struct Ema {
    pub beta: f64,
    /// The averaged weights, a flat buffer matching the generator's `ParamSet::flat`.
    pub flat: Tensor,
}

impl Ema {
    /// Starts at the current parameters.
    pub fn new(params_flat: &Tensor, beta: f64) -> Self {
        Ema { beta, flat: params_flat.detach().copy() }
    }

    /// One update where `apply` (a one-element bool tensor: the generator step was taken)
    /// is true; on the device.
    pub fn update(&mut self, params_flat: &Tensor, apply: &Tensor) {
        tch::no_grad(|| {
            let next = self.flat.lerp(params_flat, 1.0 - self.beta);
            crate::optim::select_into(&self.flat, apply, &next);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After updates with theta_1..theta_k from theta_0:
    /// ema_k = beta^k theta_0 + sum_i (1 - beta) beta^(k-i) theta_i.
    #[test]
    fn matches_the_closed_form_after_k_updates() {
        let beta = 0.5f64.powf(1.0 / 3.0); // half-life 3 updates
        let theta = |i: usize| [i as f64 * 0.5 - 1.0, (i * i) as f64 * 0.1];
        let mut ema = Ema::new(&Tensor::from_slice(&theta(0).map(|x| x as f32)), beta);
        let k = 7;
        let yes = Tensor::from(true);
        for i in 1..=k {
            ema.update(&Tensor::from_slice(&theta(i).map(|x| x as f32)), &yes);
            // Skipped generator steps leave the average alone.
            ema.update(&Tensor::from_slice(&[9.0f32, 9.0]), &Tensor::from(false));
        }
        let got = crate::hostread::vec_f32(&ema.flat).unwrap();
        for j in 0..2 {
            let mut want = beta.powi(k as i32) * theta(0)[j];
            for i in 1..=k {
                want += (1.0 - beta) * beta.powi((k - i) as i32) * theta(i)[j];
            }
            assert!((got[j] as f64 - want).abs() < 1e-5, "{j}: {} vs {want}", got[j]);
        }
        // Half-life: a constant step from 0 to 1 is halfway after 3 updates.
        let mut e = Ema::new(&Tensor::from_slice(&[0.0f32]), beta);
        for _ in 0..3 {
            e.update(&Tensor::from_slice(&[1.0f32]), &yes);
        }
        assert!((crate::hostread::scalar(&e.flat) - 0.5).abs() < 1e-6);
    }
}
