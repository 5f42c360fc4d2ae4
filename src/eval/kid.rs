//! Kernel Inception Distance (Binkowski et al. 2018) as torch-fidelity 0.4 computes it:
//! the unbiased MMD^2 estimate with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
//! over `subsets` random subsets of `subset_size` features from each side, reported as the
//! mean and the (population) standard deviation of the subset estimates. The subsets are
//! drawn exactly as torch-fidelity draws them, `np.random.RandomState(seed).choice(n, size,
//! replace=False)` (a Mersenne Twister permutation, its first `size` indices), alternately
//! for the first and the second set, so the same features and seed give the same subsets.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// torch-fidelity's defaults.
pub const SUBSETS: usize = 100;
pub const SUBSET_SIZE: usize = 1000;
pub const SEED: u32 = 2020;

/// The mean and standard deviation of the subset estimates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    pub subsets: usize,
    pub subset_size: usize,
}

/// KID of features `a` (n1, d) and `b` (n2, d), computed in float64 on their device.
pub fn kid(a: &Tensor, b: &Tensor, subsets: usize, subset_size: usize, seed: u32) -> Result<Kid> {
    let (sa, sb) = (a.size(), b.size());
    if sa.len() != 2 || sb.len() != 2 || sa[1] != sb[1] {
        bail!("KID needs two feature matrices of one width, got {sa:?} and {sb:?}");
    }
    let (n1, n2) = (sa[0] as usize, sb[0] as usize);
    if subset_size < 2 || subsets == 0 {
        bail!("KID needs subsets of at least 2 features and at least 1 subset (got size {subset_size}, {subsets} subsets)");
    }
    if n1 < subset_size || n2 < subset_size {
        bail!("KID subset size {subset_size} is larger than the number of samples ({n1} and {n2}): give at least {subset_size} of each, or a smaller subset size");
    }
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let d = sa[1] as f64;
    let mut rng = RandomState::new(seed);
    let mut mmds = Vec::with_capacity(subsets);
    for _ in 0..subsets {
        let ia = rng.choice(n1, subset_size);
        let ib = rng.choice(n2, subset_size);
        let x = a.index_select(0, &Tensor::from_slice(&ia).to_device(a.device()));
        let y = b.index_select(0, &Tensor::from_slice(&ib).to_device(b.device()));
        mmds.push(mmd2_unbiased(&x, &y, d));
    }
    let m = mmds.len() as f64;
    let mean = mmds.iter().sum::<f64>() / m;
    let std = (mmds.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m).sqrt();
    Ok(Kid { mean, std, subsets, subset_size })
}

/// Unbiased MMD^2 of two equal-sized samples: the within-set kernel means leave the
/// diagonal out, the cross term keeps every pair.
fn mmd2_unbiased(x: &Tensor, y: &Tensor, d: f64) -> f64 {
    let m = x.size()[0] as f64;
    let k = |p: &Tensor, q: &Tensor| (p.matmul(&q.transpose(0, 1)) / d + 1.0).pow_tensor_scalar(3);
    let (kxx, kyy, kxy) = (k(x, x), k(y, y), k(x, y));
    let s = |t: &Tensor| crate::hostread::scalar(&t.sum(Kind::Double));
    let t = |t: &Tensor| crate::hostread::scalar(&t.trace());
    (s(&kxx) - t(&kxx) + s(&kyy) - t(&kyy)) / (m * (m - 1.0)) - 2.0 * s(&kxy) / (m * m)
}

/// numpy's legacy `RandomState` seeded with a 32-bit integer: MT19937 (`init_genrand`), and
/// the two draws `choice(n, size, replace=False)` needs.
pub struct RandomState {
    mt: [u32; 624],
    pos: usize,
}

impl RandomState {
    pub fn new(seed: u32) -> RandomState {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1812433253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        RandomState { mt, pos: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        if self.pos == 624 {
            for i in 0..624 {
                let y = (self.mt[i] & UPPER) | (self.mt[(i + 1) % 624] & LOWER);
                let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[i] = v;
            }
            self.pos = 0;
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// numpy's `random_interval`: uniform in [0, max] by masking and rejection.
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> s;
        }
        assert!(max <= u32::MAX as u64, "more than 2^32 samples");
        loop {
            let v = (self.next_u32() as u64) & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `permutation(n)`: arange(n) shuffled from the last position down (Fisher-Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut p: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u64) as usize;
            p.swap(i, j);
        }
        p
    }

    /// `choice(n, size, replace=False)`: the first `size` of a permutation.
    pub fn choice(&mut self, n: usize, size: usize) -> Vec<i64> {
        let mut p = self.permutation(n);
        p.truncate(size);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The reference outputs of MT19937 seeded with init_genrand(5489) (the generator's
    /// published test values: the first output is 3499211612), and numpy's
    /// `RandomState(0).permutation(10)`, [2, 8, 4, 9, 1, 6, 7, 3, 0, 5], and of
    /// `r = RandomState(2020)`: `r.choice(7, 3, replace=False)`, then `r.choice(5, 5, ...)`.
    #[test]
    fn mersenne_twister_and_permutation_match_numpy() {
        let mut r = RandomState::new(5489);
        assert_eq!(r.next_u32(), 3499211612);
        assert_eq!(r.next_u32(), 581869302);
        assert_eq!(RandomState::new(0).permutation(10), vec![2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
        let mut r = RandomState::new(2020);
        assert_eq!(r.choice(7, 3), vec![5, 4, 1]);
        assert_eq!(r.choice(5, 5), vec![3, 2, 4, 1, 0]);
    }

    /// With one subset holding every feature the estimate is the plain unbiased MMD^2:
    /// checked against sums written out over all pairs.
    #[test]
    fn single_full_subset_is_the_unbiased_mmd() {
        tch::manual_seed(1);
        let a = Tensor::randn([6, 4], (Kind::Double, Device::Cpu));
        let b = Tensor::randn([6, 4], (Kind::Double, Device::Cpu)) + 0.5;
        let va: Vec<f64> = Vec::try_from(&a.flatten(0, -1)).unwrap();
        let vb: Vec<f64> = Vec::try_from(&b.flatten(0, -1)).unwrap();
        let row = |v: &[f64], i: usize| v[i * 4..i * 4 + 4].to_vec();
        let k = |x: &[f64], y: &[f64]| (x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>() / 4.0 + 1.0).powi(3);
        let (mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0);
        for i in 0..6 {
            for j in 0..6 {
                if i != j {
                    xx += k(&row(&va, i), &row(&va, j));
                    yy += k(&row(&vb, i), &row(&vb, j));
                }
                xy += k(&row(&va, i), &row(&vb, j));
            }
        }
        let want = (xx + yy) / 30.0 - 2.0 * xy / 36.0;
        let got = kid(&a, &b, 1, 6, 0).unwrap();
        // Six 4-d float64 kernels: rounding near 1e-15.
        assert!((got.mean - want).abs() < 1e-12, "{} vs {want}", got.mean);
        assert_eq!(got.std, 0.0);
        let e = format!("{}", kid(&a, &b, 1, 7, 0).unwrap_err());
        assert!(e.contains("subset size 7 is larger"), "{e}");
    }
}
