//! Improved precision and recall (Kynkaanniemi et al. 2019) with k = 3: each set's manifold
//! is the union of balls around its features, each ball's radius the distance to that
//! feature's k-th nearest neighbour in its own set. Precision is the share of generated
//! features inside the real manifold, recall the share of real features inside the generated
//! one. Distances are Euclidean, in float64, computed in row blocks so that memory stays
//! bounded (a block of rows against the whole other set); a point on a ball's surface counts
//! as inside, as in the paper's code and torch-fidelity's.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// The paper's neighbourhood size.
pub const K: i64 = 3;
/// Rows per distance block: 1024 rows against 10,000 features is 80 MB of float64.
const BLOCK: i64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecisionRecall {
    pub precision: f64,
    pub recall: f64,
}

/// Pairwise Euclidean distances (n, m) of rows of `a` and `b`, float64.
fn distances(a: &Tensor, b: &Tensor) -> Tensor {
    let aa = a.square().sum_dim_intlist(1, true, Kind::Double);
    let bb = b.square().sum_dim_intlist(1, true, Kind::Double).transpose(0, 1);
    (aa + bb - a.matmul(&b.transpose(0, 1)) * 2.0).clamp_min(0.0).sqrt()
}

/// The distance from each row of `x` to its k-th nearest other row (the (k+1)-th smallest
/// distance, the first being the row itself).
fn radii(x: &Tensor, k: i64) -> Tensor {
    let n = x.size()[0];
    let parts: Vec<Tensor> = (0..n)
        .step_by(BLOCK as usize)
        .map(|s| {
            let rows = x.narrow(0, s, BLOCK.min(n - s));
            distances(&rows, x).kthvalue(k + 1, 1, false).0
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// The share of rows of `probe` within the ball (radius `r`) of some row of `support`.
fn coverage(probe: &Tensor, support: &Tensor, r: &Tensor) -> f64 {
    let n = probe.size()[0];
    let mut inside = 0i64;
    for s in (0..n).step_by(BLOCK as usize) {
        let rows = probe.narrow(0, s, BLOCK.min(n - s));
        let hit = distances(&rows, support).le_tensor(&r.unsqueeze(0)).any_dim(1, false);
        inside += crate::hostread::scalar(&hit.sum(Kind::Int64)) as i64;
    }
    inside as f64 / n as f64
}

/// Precision and recall of `generated` (n1, d) against `real` (n2, d) with neighbourhood `k`.
pub fn precision_recall(generated: &Tensor, real: &Tensor, k: i64) -> Result<PrecisionRecall> {
    let (sg, sr) = (generated.size(), real.size());
    if sg.len() != 2 || sr.len() != 2 || sg[1] != sr[1] {
        bail!("precision and recall need two feature matrices of one width, got {sg:?} and {sr:?}");
    }
    if sg[0] <= k || sr[0] <= k {
        bail!("precision and recall with k = {k} need more than {k} features on each side (got {} and {})", sg[0], sr[0]);
    }
    let (g, r) = (generated.to_kind(Kind::Double), real.to_kind(Kind::Double));
    let (rg, rr) = (radii(&g, k), radii(&r, k));
    Ok(PrecisionRecall { precision: coverage(&g, &r, &rr), recall: coverage(&r, &g, &rg) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Points on a line, worked by hand. Real: 0, 1, 2, 3, 4 (k = 3: radii 3, 2, 2, 2, 3).
    /// Generated: 0.5, 1.5, 2.5, 3.5, 10 (radii 3, 2, 2, 3, 8.5). Every generated point but 10
    /// is within a real ball (10 is 6 from the nearest real point, radius 3): precision 4/5.
    /// Every real point is within a generated ball (the ball of 10 alone reaches 1.5): recall 1.
    #[test]
    fn points_on_a_line() {
        let col = |v: &[f64]| Tensor::from_slice(v).view([-1, 1]);
        let real = col(&[0.0, 1.0, 2.0, 3.0, 4.0]);
        let gen = col(&[0.5, 1.5, 2.5, 3.5, 10.0]);
        let pr = precision_recall(&gen, &real, 3).unwrap();
        assert_eq!(pr, PrecisionRecall { precision: 0.8, recall: 1.0 });
        let r: Vec<f64> = Vec::try_from(&radii(&real, 3)).unwrap();
        assert_eq!(r, vec![3.0, 2.0, 2.0, 2.0, 3.0]);
        // Identical sets: both 1.
        let x = Tensor::randn([20, 3], (Kind::Double, Device::Cpu));
        assert_eq!(precision_recall(&x, &x, 3).unwrap(), PrecisionRecall { precision: 1.0, recall: 1.0 });
        assert!(precision_recall(&col(&[1.0, 2.0, 3.0]), &real, 3).is_err());
    }
}
