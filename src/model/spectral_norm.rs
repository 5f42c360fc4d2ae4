//! Spectral normalisation (Miyato et al. 2018): a weight W, viewed as a matrix (out, in*k*k),
//! is divided by an estimate of its largest singular value, kept by power iteration. The
//! estimate's left vector u is the only state; it is part of the checkpoint, and because it
//! depends only on W (identical on every rank) it stays identical on every rank.

use tch::{Kind, Tensor};

/// Guards the normalisation of a vector that power iteration drove to zero.
const NORM_EPS: f64 = 1e-12;

/// On the tensor's device, without a host round trip (power iteration runs every update).
fn normalize(v: &Tensor) -> Tensor {
    v / (v.norm() + NORM_EPS)
}

/// Power-iteration state for one weight.
pub struct SpectralNorm {
    /// Left singular vector estimate, shape (out,).
    pub u: Tensor,
}

impl SpectralNorm {
    /// Starts from a random unit vector drawn from libtorch's global generator (seeded).
    pub fn new(out_features: i64, device: tch::Device) -> Self {
        let u = Tensor::randn([out_features], (Kind::Float, tch::Device::Cpu)).to_device(device);
        SpectralNorm { u: normalize(&u) }
    }

    /// `iters` power-iteration steps on W (no gradient), updating u in place.
    pub fn power_iterate(&mut self, weight: &Tensor, iters: u32) {
        tch::no_grad(|| {
            let w = matrix(weight).to_kind(self.u.kind());
            let mut u = self.u.shallow_clone();
            for _ in 0..iters {
                let v = normalize(&w.tr().mv(&u));
                u = normalize(&w.mv(&v));
            }
            self.u.copy_(&u);
        })
    }

    /// sigma = u^T W v with v = normalize(W^T u); differentiable in W (u and v are constants,
    /// as in Miyato et al.'s implementation).
    pub fn sigma(&self, weight: &Tensor) -> Tensor {
        let w = matrix(weight);
        let v = tch::no_grad(|| normalize(&w.tr().mv(&self.u.to_kind(w.kind()))));
        self.u.to_kind(w.kind()).dot(&w.mv(&v))
    }

    /// W / sigma(W).
    pub fn normalized(&self, weight: &Tensor) -> Tensor {
        weight / self.sigma(weight)
    }
}

/// The weight as a matrix with one row per output unit.
fn matrix(weight: &Tensor) -> Tensor {
    weight.flatten(1, -1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// A matrix with known singular values (5, 2, 0.5): Q1 diag(s) Q2^T with orthogonal Q1,
    /// Q2 from QR. The power-iteration estimate converges to 5; the normalised weight's
    /// largest singular value (by libtorch's SVD, an independent computation) is 1.
    #[test]
    fn sigma_converges_to_the_top_singular_value() {
        tch::manual_seed(7);
        let opts = (Kind::Double, Device::Cpu);
        let (q1, _) = Tensor::linalg_qr(&Tensor::randn([4, 4], opts), "reduced");
        let (q2, _) = Tensor::linalg_qr(&Tensor::randn([3, 3], opts), "reduced");
        let s = Tensor::from_slice(&[5.0f64, 2.0, 0.5]);
        let w = q1.narrow(1, 0, 3).matmul(&s.diag(0)).matmul(&q2.tr());
        let (_, sv, _) = w.svd(true, true);
        assert!((sv.double_value(&[0]) - 5.0).abs() < 1e-12);
        let mut sn = SpectralNorm { u: normalize(&Tensor::randn([4], opts)) };
        sn.power_iterate(&w, 50);
        // Convergence rate (2/5)^(2 * 50): exact to rounding.
        assert!((sn.sigma(&w).double_value(&[]) - 5.0).abs() < 1e-10);
        let (_, sv_n, _) = sn.normalized(&w).svd(true, true);
        assert!((sv_n.double_value(&[0]) - 1.0).abs() < 1e-10);
        // A conv-shaped weight (out 2, in 1, 2x2) is treated as its (2, 4) matrix.
        let wc = Tensor::from_slice(&[3.0f64, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0]).view([2, 1, 2, 2]);
        let mut snc = SpectralNorm { u: normalize(&Tensor::from_slice(&[1.0f64, 1.0])) };
        snc.power_iterate(&wc, 60);
        assert!((snc.sigma(&wc).double_value(&[]) - 4.0).abs() < 1e-9);
    }

    /// d sigma / d W = u v^T at convergence (the top singular pair), checked against it.
    #[test]
    fn sigma_gradient_is_the_outer_product_of_singular_vectors() {
        let opts = (Kind::Double, Device::Cpu);
        let w = Tensor::from_slice(&[2.0f64, 0.0, 0.0, 1.0]).view([2, 2]).set_requires_grad(true);
        let mut sn = SpectralNorm { u: normalize(&Tensor::from_slice(&[0.6f64, 0.8])) };
        sn.power_iterate(&w, 80);
        let g = &Tensor::run_backward(&[sn.sigma(&w)], &[&w], false, false)[0];
        let want = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 0.0]).view([2, 2]);
        assert!((g - want).abs().max().double_value(&[]) < 1e-9, "{g:?}");
        let _ = opts;
    }
}
