//! The distributed sampler: one permutation per epoch, seeded by (seed, epoch) and identical
//! on every rank; each global batch is cut into equal, disjoint per-rank slices. A sample's
//! place depends on its global index only, never on the number of ranks.

use crate::seeds::{self, SplitMix64, Stream};

pub struct DistributedSampler {
    n: usize,
    global_batch: usize,
    rank: usize,
    world: usize,
    seed: u64,
    cached_epoch: Option<u64>,
    perm: Vec<u32>,
}

impl DistributedSampler {
    /// `global_batch` must be a multiple of `world` and at most `n`.
    pub fn new(n: usize, global_batch: usize, rank: usize, world: usize, seed: u64) -> Self {
        assert!(world > 0 && global_batch.is_multiple_of(world) && global_batch <= n && rank < world);
        DistributedSampler { n, global_batch, rank, world, seed, cached_epoch: None, perm: Vec::new() }
    }

    pub fn batches_per_epoch(&self) -> u64 {
        (self.n / self.global_batch) as u64
    }

    /// This rank's sample indices for global batch number `step` (the last partial batch of
    /// each epoch is dropped, so every batch is full).
    pub fn rank_indices(&mut self, step: u64) -> Vec<i64> {
        let (epoch, start, len) = self.rank_slice(step);
        if self.cached_epoch != Some(epoch) {
            self.perm = self.permutation(epoch);
            self.cached_epoch = Some(epoch);
        }
        self.perm[start..start + len].iter().map(|&i| i as i64).collect()
    }

    /// Where `rank_indices(step)` lies: (epoch, start, length) within that epoch's permutation.
    pub fn rank_slice(&self, step: u64) -> (u64, usize, usize) {
        let per_epoch = self.batches_per_epoch();
        let (epoch, k) = (step / per_epoch, (step % per_epoch) as usize);
        let local = self.global_batch / self.world;
        (epoch, k * self.global_batch + self.rank * local, local)
    }

    /// The order of the whole data set in `epoch` (the same on every rank).
    pub fn permutation(&self, epoch: u64) -> Vec<u32> {
        epoch_permutation(self.n, seeds::seed_of(self.seed, Stream::EpochOrder, epoch))
    }
}

/// Fisher-Yates shuffle of 0..n.
pub fn epoch_permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let p = epoch_permutation(1000, 7);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<u32>>());
        assert_eq!(p, epoch_permutation(1000, 7));
        assert_ne!(p, epoch_permutation(1000, 8));
    }

    #[test]
    fn ranks_partition_the_global_batch_whatever_the_world_size() {
        let (n, g) = (103, 12);
        for step in [0u64, 1, 7, 8, 9, 25] {
            let mut one = DistributedSampler::new(n, g, 0, 1, 3);
            let whole = one.rank_indices(step);
            for world in [2, 3, 4, 6] {
                let concat: Vec<i64> = (0..world)
                    .flat_map(|r| DistributedSampler::new(n, g, r, world, 3).rank_indices(step))
                    .collect();
                assert_eq!(concat, whole, "step {step} world {world}");
            }
        }
    }

    #[test]
    fn an_epoch_visits_each_sample_at_most_once() {
        let mut s = DistributedSampler::new(100, 10, 0, 1, 1);
        let mut seen: Vec<i64> = (0..s.batches_per_epoch()).flat_map(|k| s.rank_indices(k)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 100);
        // The next epoch is a different order.
        assert_ne!(s.rank_indices(10), s.rank_indices(0));
    }
}
