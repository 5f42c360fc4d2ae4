//! Fault injection (`[faults]`, off by default), for the tests of the failure paths: the one
//! hook the critic update calls with its local gradient, the switch that keeps the penalty's
//! gradient out of the reduction, and rank 0's stall in its own work. Nothing else in the
//! trainer knows about faults.

use crate::config::FaultConfig;
use anyhow::{bail, Result};
use tch::Tensor;

pub struct Faults {
    cfg: FaultConfig,
    rank: i64,
    /// Critic updates attempted by this process, including those a rollback undid, so that
    /// an injected fault does not recur after a rollback; a resumed process starts at the
    /// checkpoint's critic step.
    attempts: u64,
}

impl Faults {
    pub fn new(cfg: &FaultConfig, rank: usize) -> Self {
        Faults { cfg: cfg.clone(), rank: rank as i64, attempts: 0 }
    }

    /// Where a resumed process starts counting critic attempts.
    pub fn count_from(&mut self, critic_step: u64) {
        self.attempts = critic_step;
    }

    /// A deliberately wrong trainer for the world-size tests: each rank keeps the gradient
    /// penalty's gradient to itself (`faults.unreduced_penalty`).
    pub fn unreduced_penalty(&self) -> bool {
        self.cfg.unreduced_penalty
    }

    /// Called with each critic update's local gradient, before the reduction: fills it with
    /// NaN (`nan_critic_updates` on `nan_rank`) or fails as a device fault would
    /// (`fail_critic_update` on `fail_rank`). Counts the attempt.
    pub fn critic_gradient(&mut self, grad: &Tensor) -> Result<()> {
        let (attempt, rank) = (self.attempts, self.rank);
        self.attempts += 1;
        let here = |r: i64| r < 0 || r == rank;
        if self.cfg.nan_critic_updates.contains(&attempt) && here(self.cfg.nan_rank) {
            let _ = grad.shallow_clone().fill_(f64::NAN);
        }
        if self.cfg.fail_critic_update == Some(attempt) && here(self.cfg.fail_rank) {
            bail!("injected fault at critic update {attempt} on rank {rank} (faults.fail_critic_update)");
        }
        Ok(())
    }

    /// Rank 0's stall in its own work (`root_work_delay_seconds`), standing for slow storage
    /// or a long evaluation.
    pub fn stall_root_work(&self) {
        if self.cfg.root_work_delay_seconds > 0.0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(self.cfg.root_work_delay_seconds));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nan_count(t: &Tensor) -> usize {
        crate::hostread::vec_f32(t).unwrap().iter().filter(|x| x.is_nan()).count()
    }

    #[test]
    fn faults_hit_the_configured_attempts_and_ranks_only() {
        let cfg = FaultConfig { nan_critic_updates: vec![1, 4], nan_rank: 1, fail_critic_update: Some(5), fail_rank: -1, ..FaultConfig::default() };
        let mut on_1 = Faults::new(&cfg, 1);
        let mut on_0 = Faults::new(&cfg, 0);
        let mut hit = Vec::new();
        for attempt in 0..5 {
            let (g1, g0) = (Tensor::ones([3], (tch::Kind::Float, tch::Device::Cpu)), Tensor::ones([3], (tch::Kind::Float, tch::Device::Cpu)));
            on_1.critic_gradient(&g1).unwrap();
            on_0.critic_gradient(&g0).unwrap();
            assert_eq!(nan_count(&g0), 0, "rank 0 is not nan_rank");
            if nan_count(&g1) == 3 {
                hit.push(attempt);
            }
        }
        assert_eq!(hit, vec![1, 4]);
        // Attempt 5 fails on every rank (fail_rank -1), naming itself.
        let e = on_0.critic_gradient(&Tensor::ones([1], (tch::Kind::Float, tch::Device::Cpu))).unwrap_err().to_string();
        assert!(e.contains("critic update 5 on rank 0"), "{e}");
        // A resumed process counts from the checkpoint's critic step: attempt 4 is behind it.
        let mut resumed = Faults::new(&cfg, 1);
        resumed.count_from(5);
        let g = Tensor::ones([2], (tch::Kind::Float, tch::Device::Cpu));
        assert!(resumed.critic_gradient(&g).is_err());
        assert_eq!(nan_count(&g), 0);
    }
}
