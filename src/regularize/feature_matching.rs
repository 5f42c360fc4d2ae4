//! Feature matching (Salimans et al. 2016): the generator term ||E f(real) - E f(fake)||^2 on
//! the critic's intermediate features f (the flattened output of its last convolution).
//!
//! Data parallel, exactly. The means must be over the GLOBAL batch, and the squared norm of a
//! mean is not linear in per-rank means, so averaging per-rank losses would be wrong by a
//! world-size-dependent amount. Instead the trainer first all-reduces the two mean feature
//! vectors (a few thousand floats: one small extra reduction, only when feature matching is
//! on), giving every rank the global d = m_real - m_fake. The exact gradient is
//! -2 d^T dm_fake/dtheta, and m_fake = (1/N) sum_k m_fake^(k), so rank k back-propagates the
//! surrogate -2 d . m_fake^(k) (d held constant): the usual mean over ranks of the gradients
//! then equals the global gradient. The surrogate is shifted so that its value is ||d||^2.

use tch::Tensor;

/// Mean feature vector of a batch: (B, F) -> (F,).
pub fn batch_mean(features: &Tensor) -> Tensor {
    features.mean_dim([0i64].as_slice(), false, features.kind())
}

/// The feature-matching term for back-propagation on one rank. `global_real` and
/// `global_fake` are the global-batch means (constants); `local_fake` is this rank's mean of
/// fake features, attached to the generator's graph. Value: ||global_real - global_fake||^2;
/// gradient (after the mean over ranks): that of the global term.
pub fn loss(global_real: &Tensor, global_fake: &Tensor, local_fake: &Tensor) -> Tensor {
    let d = (global_real - global_fake).detach();
    let value = d.square().sum(d.kind());
    let surrogate = -(local_fake * &d).sum(d.kind()) * 2.0;
    &value + &surrogate - surrogate.detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn opts() -> (Kind, Device) {
        (Kind::Double, Device::Cpu)
    }

    /// A tiny known "network": features f(x) = relu(W x) with fakes x = theta * z. Single rank:
    /// value and gradient equal those of ||mean f(real) - mean f(fake)||^2 by autograd, and by a
    /// hand computation for a 1-feature case.
    #[test]
    fn single_rank_equals_the_direct_term() {
        tch::manual_seed(11);
        let w = Tensor::randn([5, 3], opts());
        let real = Tensor::randn([8, 3], opts());
        let z = Tensor::randn([8, 3], opts());
        let theta = (Tensor::randn([3, 3], opts()) * 0.5).set_requires_grad(true);
        let f = |x: &Tensor| x.matmul(&w.tr()).relu();
        let fake = z.matmul(&theta);
        let mr = batch_mean(&f(&real));
        let mf = batch_mean(&f(&fake));
        let ours = loss(&mr, &mf.detach(), &mf);
        let direct = (&mr - &mf).square().sum(Kind::Double);
        assert!((ours.double_value(&[]) - direct.double_value(&[])).abs() < 1e-12);
        let g1 = &Tensor::run_backward(&[&ours], &[&theta], true, false)[0];
        let g2 = &Tensor::run_backward(&[&direct], &[&theta], false, false)[0];
        assert!((g1 - g2).abs().max().double_value(&[]) < 1e-12);

        // One feature, identity map, fakes = theta (scalar) * z: d/dtheta (mr - theta mz)^2 =
        // -2 (mr - theta mz) mz.
        let th = Tensor::from_slice(&[0.5f64]).set_requires_grad(true);
        let real = Tensor::from_slice(&[1.0f64, 3.0]).view([2, 1]);
        let z = Tensor::from_slice(&[2.0f64, 4.0]).view([2, 1]);
        let mf = batch_mean(&(&z * &th));
        let l = loss(&batch_mean(&real), &mf.detach(), &mf);
        // mr = 2, mz = 3, mf = 1.5: value (2 - 1.5)^2 = 0.25, gradient -2 * 0.5 * 3 = -3.
        assert!((l.double_value(&[]) - 0.25).abs() < 1e-12);
        let g = Tensor::run_backward(&[&l], &[&th], false, false)[0].double_value(&[0]);
        assert!((g + 3.0).abs() < 1e-12, "{g}");
    }

    /// Two simulated ranks with half the batch each: the mean of their gradients (what the
    /// all-reduce computes) equals the full-batch gradient, while the naive mean of per-rank
    /// feature-matching losses does not.
    #[test]
    fn two_ranks_match_the_global_batch() {
        tch::manual_seed(12);
        let w = Tensor::randn([4, 3], opts());
        let real = Tensor::randn([6, 3], opts());
        let z = Tensor::randn([6, 3], opts());
        let theta = (Tensor::randn([3, 3], opts()) * 0.5).set_requires_grad(true);
        let f = |x: &Tensor| x.matmul(&w.tr()).tanh();
        let full = (batch_mean(&f(&real)) - batch_mean(&f(&z.matmul(&theta)))).square().sum(Kind::Double);
        let g_full = Tensor::run_backward(&[&full], &[&theta], false, false)[0].copy();
        let halves = |t: &Tensor| [t.narrow(0, 0, 3), t.narrow(0, 3, 3)];
        let (rs, zs) = (halves(&real), halves(&z));
        let local_real: Vec<Tensor> = rs.iter().map(|r| batch_mean(&f(r))).collect();
        let local_fake: Vec<Tensor> = zs.iter().map(|z| batch_mean(&f(&z.matmul(&theta)))).collect();
        // The all-reduce of the means.
        let gr = (&local_real[0] + &local_real[1]) / 2.0;
        let gf = ((&local_fake[0] + &local_fake[1]) / 2.0).detach();
        let mut g_mean = theta.zeros_like();
        let mut naive = theta.zeros_like();
        for k in 0..2 {
            let l = loss(&gr, &gf, &local_fake[k]);
            assert!((l.double_value(&[]) - full.double_value(&[])).abs() < 1e-12);
            g_mean += Tensor::run_backward(&[&l], &[&theta], true, false)[0].copy() / 2.0;
            let per_rank = (&local_real[k] - &local_fake[k]).square().sum(Kind::Double);
            naive += Tensor::run_backward(&[&per_rank], &[&theta], true, false)[0].copy() / 2.0;
        }
        assert!((&g_mean - &g_full).abs().max().double_value(&[]) < 1e-12);
        assert!((&naive - &g_full).abs().max().double_value(&[]) > 1e-6, "per-rank means are not exact");
    }
}
