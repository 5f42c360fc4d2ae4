//! Wall-clock time of the stages of one update (data, forward, backward, all-reduce,
//! optimizer), timed by laps of one clock so that the stages add up to the update's duration.
//! (Not the GAN's phases: both networks' updates go through the same stages.)
//!
//! On a GPU, kernels run asynchronously and an update does not wait for them (see
//! `train::trainer`), so a stage measures the host's time to queue its work; only the MPI
//! backend's host staging of the all-reduce waits for the device, inside `Allreduce`.

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Real batch and noise for this rank.
    Data,
    /// Network outputs and losses (including the gradient penalty's inner input gradient).
    Forward,
    /// Parameter gradients and their flat buffer.
    Backward,
    /// The one reduction of gradient, flags and scalars across ranks.
    Allreduce,
    /// Norms, clipping and the optimizer step.
    Optimizer,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Data, Stage::Forward, Stage::Backward, Stage::Allreduce, Stage::Optimizer];

    /// The value of the `phase` label of `gandist_step_phase_seconds`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Data => "data",
            Stage::Forward => "forward",
            Stage::Backward => "backward",
            Stage::Allreduce => "allreduce",
            Stage::Optimizer => "optimizer",
        }
    }
}

/// Seconds spent in each stage of one update, indexed like `Stage::ALL`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes(pub [f64; 5]);

impl StageTimes {
    pub fn get(&self, s: Stage) -> f64 {
        self.0[s as usize]
    }

    pub fn total(&self) -> f64 {
        self.0.iter().sum()
    }
}

/// Times consecutive stages: each `lap` charges the time since the previous lap to a stage.
pub struct LapClock {
    last: Instant,
    times: StageTimes,
}

impl LapClock {
    pub fn start() -> Self {
        LapClock { last: Instant::now(), times: StageTimes::default() }
    }

    pub fn lap(&mut self, s: Stage) {
        let now = Instant::now();
        self.times.0[s as usize] += (now - self.last).as_secs_f64();
        self.last = now;
    }

    pub fn times(&self) -> StageTimes {
        self.times
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn laps_charge_their_stage_and_add_up() {
        let t0 = Instant::now();
        let mut c = LapClock::start();
        std::thread::sleep(Duration::from_millis(20));
        c.lap(Stage::Data);
        std::thread::sleep(Duration::from_millis(5));
        c.lap(Stage::Allreduce);
        c.lap(Stage::Optimizer);
        let wall = t0.elapsed().as_secs_f64();
        let t = c.times();
        assert!(t.get(Stage::Data) >= 0.020, "{t:?}");
        assert!(t.get(Stage::Allreduce) >= 0.005 && t.get(Stage::Allreduce) < t.get(Stage::Data), "{t:?}");
        assert_eq!(t.get(Stage::Forward), 0.0);
        // Laps tile the interval: their sum cannot exceed the wall time around them.
        assert!(t.total() <= wall + 1e-9, "{} > {wall}", t.total());
        assert_eq!(Stage::ALL.map(|s| s.name()), ["data", "forward", "backward", "allreduce", "optimizer"]);
    }
}
