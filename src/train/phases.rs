//! Wall-clock phases of one update (data, forward, backward, all-reduce, optimizer), timed by
//! laps of one clock so that the phases add up to the update's duration.
//!
//! On a GPU, kernels run asynchronously and an update does not wait for them (see
//! `train::step`), so the phases measure the host's time to queue each phase's work; only the
//! MPI backend's host staging of the all-reduce waits for the device, inside `Allreduce`.

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Real batch and noise for this rank.
    Data,
    /// Network outputs and losses (including the gradient penalty's inner input gradient).
    Forward,
    /// Parameter gradients and their flat buffer.
    Backward,
    /// The one reduction of gradient, flags and scalars across ranks.
    Allreduce,
    /// Norms, clipping and the Adam step.
    Optimizer,
}

impl Phase {
    pub const ALL: [Phase; 5] = [Phase::Data, Phase::Forward, Phase::Backward, Phase::Allreduce, Phase::Optimizer];

    /// The label value used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Data => "data",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Allreduce => "allreduce",
            Phase::Optimizer => "optimizer",
        }
    }
}

/// Seconds spent in each phase of one update, indexed like `Phase::ALL`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes(pub [f64; 5]);

impl PhaseTimes {
    pub fn get(&self, p: Phase) -> f64 {
        self.0[p as usize]
    }

    pub fn total(&self) -> f64 {
        self.0.iter().sum()
    }
}

/// Times consecutive phases: each `lap` charges the time since the previous lap to a phase.
pub struct PhaseClock {
    last: Instant,
    times: PhaseTimes,
}

impl PhaseClock {
    pub fn start() -> Self {
        PhaseClock { last: Instant::now(), times: PhaseTimes::default() }
    }

    pub fn lap(&mut self, p: Phase) {
        let now = Instant::now();
        self.times.0[p as usize] += (now - self.last).as_secs_f64();
        self.last = now;
    }

    pub fn times(&self) -> PhaseTimes {
        self.times
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn laps_charge_their_phase_and_add_up() {
        let t0 = Instant::now();
        let mut c = PhaseClock::start();
        std::thread::sleep(Duration::from_millis(20));
        c.lap(Phase::Data);
        std::thread::sleep(Duration::from_millis(5));
        c.lap(Phase::Allreduce);
        c.lap(Phase::Optimizer);
        let wall = t0.elapsed().as_secs_f64();
        let t = c.times();
        assert!(t.get(Phase::Data) >= 0.020, "{t:?}");
        assert!(t.get(Phase::Allreduce) >= 0.005 && t.get(Phase::Allreduce) < t.get(Phase::Data), "{t:?}");
        assert_eq!(t.get(Phase::Forward), 0.0);
        // Laps tile the interval: their sum cannot exceed the wall time around them.
        assert!(t.total() <= wall + 1e-9, "{} > {wall}", t.total());
        assert_eq!(Phase::ALL.map(|p| p.name()), ["data", "forward", "backward", "allreduce", "optimizer"]);
    }
}
