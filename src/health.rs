//! Gradient-health detector: classifies each network's pre-clip gradient norm, update by
//! update, as healthy, vanishing (under a threshold for M consecutive updates), exploding
//! (over a threshold, or grown by a factor F against the norm W updates earlier, when that
//! one was not itself under the vanishing threshold) or
//! non-finite. Diagnostic only: it changes nothing in training. The trainer keeps one per
//! network and reports `state()` on the progress line and in the scalar log; other modules
//! (metrics) read it through `state()` and `counts()`. Its state travels in checkpoints
//! (`snapshot`, `restore`), so that a resumed run classifies and counts as if never stopped.

use crate::config::HealthConfig;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GradientHealth {
    #[default]
    Healthy,
    Vanishing,
    Exploding,
    NonFinite,
}

impl GradientHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            GradientHealth::Healthy => "healthy",
            GradientHealth::Vanishing => "vanishing",
            GradientHealth::Exploding => "exploding",
            GradientHealth::NonFinite => "non-finite",
        }
    }

    /// A small integer for gauges: 0 healthy, 1 vanishing, 2 exploding, 3 non-finite.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// How many updates were in each unhealthy state since the start of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCounts {
    pub vanishing: u64,
    pub exploding: u64,
    pub non_finite: u64,
}

/// A monitor's state, as kept in a checkpoint's meta.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthSnapshot {
    pub below: u64,
    pub window: Vec<f64>,
    pub state: GradientHealth,
    pub counts: HealthCounts,
}

pub struct HealthMonitor {
    cfg: HealthConfig,
    /// Consecutive updates under the vanishing threshold.
    below: u64,
    /// The last `growth_window` finite norms, oldest first.
    window: VecDeque<f64>,
    state: GradientHealth,
    counts: HealthCounts,
}

impl HealthMonitor {
    pub fn new(cfg: &HealthConfig) -> Self {
        HealthMonitor { cfg: cfg.clone(), below: 0, window: VecDeque::new(), state: GradientHealth::Healthy, counts: HealthCounts::default() }
    }

    /// Feeds one update's gradient norm (NaN or infinite for a non-finite gradient).
    pub fn observe(&mut self, norm: f64) -> GradientHealth {
        let c = &self.cfg;
        self.state = if !norm.is_finite() {
            self.below = 0;
            GradientHealth::NonFinite
        } else {
            self.below = if norm < c.vanish_threshold { self.below + 1 } else { 0 };
            // Growth counts only from a norm at or above the vanishing threshold, so that
            // recovering from a vanished gradient is not reported as an explosion.
            let grown = self.window.len() as u64 == c.growth_window
                && self.window.front().is_some_and(|&old| old >= c.vanish_threshold && norm > c.growth_factor * old);
            self.window.push_back(norm);
            if self.window.len() as u64 > c.growth_window {
                self.window.pop_front();
            }
            if norm > c.explode_threshold || grown {
                GradientHealth::Exploding
            } else if self.below >= c.vanish_patience {
                GradientHealth::Vanishing
            } else {
                GradientHealth::Healthy
            }
        };
        match self.state {
            GradientHealth::Vanishing => self.counts.vanishing += 1,
            GradientHealth::Exploding => self.counts.exploding += 1,
            GradientHealth::NonFinite => self.counts.non_finite += 1,
            GradientHealth::Healthy => {}
        }
        self.state
    }

    /// The state after the latest update.
    pub fn state(&self) -> GradientHealth {
        self.state
    }

    pub fn counts(&self) -> HealthCounts {
        self.counts
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        HealthSnapshot { below: self.below, window: self.window.iter().copied().collect(), state: self.state, counts: self.counts }
    }

    /// Continues from a snapshot (taken under the same configuration: the window keeps at most
    /// `growth_window` norms).
    pub fn restore(&mut self, s: &HealthSnapshot) {
        let keep = s.window.len().saturating_sub(self.cfg.growth_window as usize);
        self.below = s.below;
        self.window = s.window[keep..].iter().copied().collect();
        self.state = s.state;
        self.counts = s.counts;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GradientHealth::*;

    fn cfg() -> HealthConfig {
        HealthConfig { vanish_threshold: 1e-3, vanish_patience: 3, explode_threshold: 100.0, growth_factor: 10.0, growth_window: 2 }
    }

    fn run(seq: &[f64]) -> Vec<GradientHealth> {
        let mut m = HealthMonitor::new(&cfg());
        seq.iter().map(|&n| m.observe(n)).collect()
    }

    #[test]
    fn vanishing_needs_m_consecutive_small_norms() {
        assert_eq!(
            run(&[1.0, 1e-4, 1e-4, 1e-4, 1e-5, 1.0, 1e-4, 1e-4]),
            vec![Healthy, Healthy, Healthy, Vanishing, Vanishing, Healthy, Healthy, Healthy]
        );
    }

    #[test]
    fn exploding_by_threshold_and_by_growth() {
        // 150 > 100; then growth: 60 > 10 * 5 (two updates earlier) though under 100.
        assert_eq!(run(&[1.0, 150.0, 1.0]), vec![Healthy, Exploding, Healthy]);
        assert_eq!(run(&[5.0, 6.0, 60.0]), vec![Healthy, Healthy, Exploding]);
        // 49 < 10 * 5: not yet.
        assert_eq!(run(&[5.0, 6.0, 49.0]), vec![Healthy, Healthy, Healthy]);
        // Growth needs a full window.
        assert_eq!(run(&[1.0, 50.0]), vec![Healthy, Healthy]);
    }

    #[test]
    fn non_finite_and_counts() {
        let mut m = HealthMonitor::new(&cfg());
        for n in [1.0, f64::NAN, f64::INFINITY, 1e-4, 1e-4, 1e-4, 500.0] {
            m.observe(n);
        }
        assert_eq!(m.state(), Exploding);
        assert_eq!(m.counts(), HealthCounts { vanishing: 1, exploding: 1, non_finite: 2 });
        assert_eq!(NonFinite.as_str(), "non-finite");
        assert_eq!(Exploding.code(), 2);
    }

    /// A monitor restored from a snapshot (through JSON, as in meta.json) classifies the rest
    /// of a sequence exactly like one that saw all of it.
    #[test]
    fn snapshot_restore_continues_the_sequence() {
        let seq = [5.0, 1e-4, 1e-4, 6.0, 1e-4, 1e-4, 80.0, f64::NAN, 1e-4, 1e-4, 1e-4, 700.0];
        for cut in 0..seq.len() {
            let mut first = HealthMonitor::new(&cfg());
            seq[..cut].iter().for_each(|&n| { first.observe(n); });
            let json = serde_json::to_string(&first.snapshot()).unwrap();
            let mut resumed = HealthMonitor::new(&cfg());
            resumed.restore(&serde_json::from_str(&json).unwrap());
            let rest: Vec<GradientHealth> = seq[cut..].iter().map(|&n| resumed.observe(n)).collect();
            assert_eq!(rest, run(&seq)[cut..].to_vec(), "cut at {cut}");
            let mut whole = HealthMonitor::new(&cfg());
            seq.iter().for_each(|&n| { whole.observe(n); });
            assert_eq!(resumed.counts(), whole.counts(), "cut at {cut}");
        }
        assert!(serde_json::to_string(&NonFinite).unwrap().contains("non-finite"));
    }
}
