//! Gaussian statistics of feature sets and the Frechet distance between two Gaussians,
//! computed in float64 on the CPU with symmetric eigendecompositions.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// Mean and covariance of a set of feature vectors, in float64 on the CPU.
#[derive(Debug)]
pub struct Gaussian {
    /// (d,)
    pub mean: Tensor,
    /// (d, d), unbiased (divides by n - 1).
    pub cov: Tensor,
    pub n: usize,
}

impl Gaussian {
    /// Statistics of the rows of `features` (n, d); needs n >= 2.
    pub fn of_features(features: &Tensor) -> Result<Gaussian> {
        let size = features.size();
        if size.len() != 2 || size[0] < 2 {
            bail!("feature statistics need at least 2 feature vectors (got shape {size:?})");
        }
        let x = crate::hostread::to_cpu(features).to_kind(Kind::Double);
        let n = size[0];
        let mean = x.mean_dim(0, false, Kind::Double);
        let centred = &x - &mean;
        let cov = centred.transpose(0, 1).matmul(&centred) / (n - 1) as f64;
        Ok(Gaussian { mean, cov, n: n as usize })
    }

    pub fn dim(&self) -> i64 {
        self.mean.size()[0]
    }
}

/// Square root of a symmetric positive semi-definite matrix (eigenvalues below zero, which
/// only rounding produces, are clamped to zero).
fn sqrt_psd(s: &Tensor) -> Tensor {
    let sym = (s + s.transpose(0, 1)) * 0.5;
    let (vals, vecs) = sym.linalg_eigh("L");
    let root = vals.clamp_min(0.0).sqrt();
    (&vecs * root.unsqueeze(0)).matmul(&vecs.transpose(0, 1))
}

/// tr sqrt(S1 S2) for symmetric PSD S1, S2, as tr sqrt(S1^1/2 S2 S1^1/2): that matrix is
/// symmetric PSD, so a symmetric eigensolver applies and no complex square root is needed.
pub fn trace_sqrt_product(s1: &Tensor, s2: &Tensor) -> f64 {
    let s1 = crate::hostread::to_cpu(s1).to_kind(Kind::Double);
    let s2 = crate::hostread::to_cpu(s2).to_kind(Kind::Double);
    let r = sqrt_psd(&s1);
    let m = r.matmul(&s2).matmul(&r);
    let m = (&m + m.transpose(0, 1)) * 0.5;
    let (vals, _) = m.linalg_eigh("L");
    crate::hostread::scalar(&vals.clamp_min(0.0).sqrt().sum(Kind::Double))
}

/// tr sqrt(S1 S2) as `trace_sqrt_product`, with the smallest eigenvalue of S1^1/2 S2 S1^1/2
/// (below zero only by rounding for covariances; further below for a matrix that is not one).
fn trace_sqrt_product_and_min(s1: &Tensor, s2: &Tensor) -> (f64, f64) {
    let s1 = crate::hostread::to_cpu(s1).to_kind(Kind::Double);
    let s2 = crate::hostread::to_cpu(s2).to_kind(Kind::Double);
    let r = sqrt_psd(&s1);
    let m = r.matmul(&s2).matmul(&r);
    let m = (&m + m.transpose(0, 1)) * 0.5;
    let vals = m.linalg_eigvalsh("L");
    let trace = crate::hostread::scalar(&vals.clamp_min(0.0).sqrt().sum(Kind::Double));
    (trace, crate::hostread::scalar(&vals.min()))
}

/// pytorch-fid's `calculate_frechet_distance` (eps 1e-6): ||mu1 - mu2||^2 + tr(S1) + tr(S2)
/// - 2 tr sqrtm(S1 S2), not clamped. The trace of the matrix square root is the sum of the
/// square roots of the eigenvalues of S1 S2, which are those of S1^1/2 S2 S1^1/2; a symmetric
/// eigensolver finds them (scipy's Schur-based `sqrtm` gives the same trace to rounding). As
/// there: when the result is not finite, eps is added to both diagonals and it is computed
/// again; an eigenvalue below zero beyond rounding (its root's imaginary part over 1e-3, the
/// `np.allclose(..., atol=1e-3)` test on the root's diagonal) is an error, "Imaginary
/// component". The mean and covariance are used as given (float64).
pub fn pytorch_fid_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    const EPS: f64 = 1e-6;
    if a.mean.size() != b.mean.size() {
        bail!("Training and test mean vectors have different lengths ({:?} and {:?})", a.mean.size(), b.mean.size());
    }
    if a.cov.size() != b.cov.size() {
        bail!("Training and test covariances have different dimensions ({:?} and {:?})", a.cov.size(), b.cov.size());
    }
    let to64 = |t: &Tensor| crate::hostread::to_cpu(t).to_kind(Kind::Double);
    let (s1, s2) = (to64(&a.cov), to64(&b.cov));
    let diff = to64(&a.mean) - to64(&b.mean);
    let (mut tr_covmean, mut min_eig) = trace_sqrt_product_and_min(&s1, &s2);
    if !tr_covmean.is_finite() {
        tracing::warn!("fid calculation produces singular product; adding {EPS} to diagonal of cov estimates");
        let offset = Tensor::eye(s1.size()[0], (Kind::Double, tch::Device::Cpu)) * EPS;
        (tr_covmean, min_eig) = trace_sqrt_product_and_min(&(&s1 + &offset), &(&s2 + &offset));
    }
    if min_eig < 0.0 && (-min_eig).sqrt() > 1e-3 {
        bail!("Imaginary component {}: a covariance is not positive semi-definite (smallest eigenvalue of S1^1/2 S2 S1^1/2 is {min_eig})", (-min_eig).sqrt());
    }
    let s = crate::hostread::scalar;
    let d = s(&diff.dot(&diff)) + s(&s1.trace()) + s(&s2.trace()) - 2.0 * tr_covmean;
    if !d.is_finite() {
        bail!("the Frechet distance is not finite ({d}): the statistics hold non-finite values");
    }
    Ok(d)
}

/// ||m1 - m2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), clamped at 0 against rounding.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    if a.dim() != b.dim() {
        bail!("feature dimensions differ: {} vs {}", a.dim(), b.dim());
    }
    let diff = &a.mean - &b.mean;
    let mean_term = crate::hostread::scalar(&diff.dot(&diff));
    let tr = |s: &Tensor| crate::hostread::scalar(&s.trace());
    let d = mean_term + tr(&a.cov) + tr(&b.cov) - 2.0 * trace_sqrt_product(&a.cov, &b.cov);
    if !d.is_finite() {
        bail!("the Frechet distance is not finite ({d}): the features hold non-finite values");
    }
    Ok(d.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn mat(rows: &[&[f64]]) -> Tensor {
        let n = rows.len() as i64;
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([n, -1])
    }

    fn gaussian(mean: &[f64], cov: Tensor) -> Gaussian {
        Gaussian { mean: Tensor::from_slice(mean), cov, n: 0 }
    }

    /// Diagonal (commuting) covariances: d = ||m1-m2||^2 + sum (sqrt a_i - sqrt b_i)^2.
    #[test]
    fn diagonal_covariances_match_closed_form() {
        let (m1, m2): ([f64; 4], [f64; 4]) = ([1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 0.5, -1.0]);
        let (a, b): ([f64; 4], [f64; 4]) = ([4.0, 1.0, 0.25, 9.0], [1.0, 2.0, 0.25, 0.5]);
        let g1 = gaussian(&m1, Tensor::from_slice(&a).diag(0));
        let g2 = gaussian(&m2, Tensor::from_slice(&b).diag(0));
        let want: f64 = m1.iter().zip(&m2).map(|(x, y)| (x - y) * (x - y)).sum::<f64>()
            + a.iter().zip(&b).map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2)).sum::<f64>();
        let got = frechet_distance(&g1, &g2).unwrap();
        // Eigendecompositions of 4x4 diagonal matrices in float64: error near machine epsilon.
        assert!((got - want).abs() < 1e-10, "got {got}, want {want}");
    }

    /// Non-commuting 2x2 case against an independent closed form: for a 2x2 matrix M with
    /// non-negative real eigenvalues, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    #[test]
    fn non_commuting_covariances_match_2x2_closed_form() {
        let s1: [[f64; 2]; 2] = [[2.0, 0.8], [0.8, 1.0]];
        let s2: [[f64; 2]; 2] = [[1.0, -0.3], [-0.3, 3.0]];
        // M = S1 S2 (not symmetric; its eigenvalues are those of S1^1/2 S2 S1^1/2, all >= 0).
        let m = [
            [s1[0][0] * s2[0][0] + s1[0][1] * s2[1][0], s1[0][0] * s2[0][1] + s1[0][1] * s2[1][1]],
            [s1[1][0] * s2[0][0] + s1[1][1] * s2[1][0], s1[1][0] * s2[0][1] + s1[1][1] * s2[1][1]],
        ];
        assert!((m[0][1] - m[1][0]).abs() > 0.1, "S1 and S2 must not commute for this test");
        let tr_m = m[0][0] + m[1][1];
        let det_m = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        let tr_sqrt = (tr_m + 2.0 * det_m.sqrt()).sqrt();
        let t1 = mat(&[&s1[0], &s1[1]]);
        let t2 = mat(&[&s2[0], &s2[1]]);
        let got = trace_sqrt_product(&t1, &t2);
        assert!((got - tr_sqrt).abs() < 1e-10, "tr sqrt(S1 S2): got {got}, want {tr_sqrt}");
        // And symmetric in its arguments, as tr sqrt(S1 S2) = tr sqrt(S2 S1).
        assert!((trace_sqrt_product(&t2, &t1) - tr_sqrt).abs() < 1e-10);
        let (m1, m2): ([f64; 2], [f64; 2]) = ([0.3, -0.7], [1.0, 0.2]);
        let want = (m1[0] - m2[0]).powi(2) + (m1[1] - m2[1]).powi(2) + 3.0 + 4.0 - 2.0 * tr_sqrt;
        let got = frechet_distance(&gaussian(&m1, t1), &gaussian(&m2, t2)).unwrap();
        assert!((got - want).abs() < 1e-10, "got {got}, want {want}");
    }

    /// Sample statistics: a Gaussian against itself is 0; mean and covariance match the
    /// textbook formulas on a small set.
    #[test]
    fn sample_statistics_and_self_distance() {
        let x = mat(&[&[1.0, 2.0], &[3.0, 0.0], &[5.0, 4.0]]);
        let g = Gaussian::of_features(&x).unwrap();
        let mean: Vec<f64> = Vec::try_from(&g.mean).unwrap();
        assert_eq!(mean, vec![3.0, 2.0]);
        // Deviations (-2, 0), (0, -2), (2, 2): cov = [[8, 4], [4, 8]] / 2.
        let cov: Vec<f64> = Vec::try_from(&g.cov.flatten(0, -1)).unwrap();
        assert_eq!(cov, vec![4.0, 2.0, 2.0, 4.0]);
        tch::manual_seed(3);
        let f = Tensor::randn([500, 16], (Kind::Float, Device::Cpu));
        let g = Gaussian::of_features(&f).unwrap();
        let d = frechet_distance(&g, &g).unwrap();
        // tr S - 2 tr sqrt(S^2) + tr S with S of order 1: float64 rounding, well under 1e-8.
        assert!(d < 1e-8, "self distance {d}");
    }

    #[test]
    fn mismatched_dimensions_and_too_few_vectors_are_errors() {
        let a = Gaussian::of_features(&Tensor::ones([3, 2], (Kind::Float, Device::Cpu))).unwrap();
        let b = Gaussian::of_features(&Tensor::ones([3, 4], (Kind::Float, Device::Cpu))).unwrap();
        assert!(format!("{}", frechet_distance(&a, &b).unwrap_err()).contains("dimensions differ"));
        assert!(Gaussian::of_features(&Tensor::ones([1, 4], (Kind::Float, Device::Cpu))).is_err());
    }
}
