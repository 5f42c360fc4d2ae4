//! Rank 0's progress: a bar on a terminal; elsewhere (a file, `sbatch` output) a log line per
//! logged step, with percent done, elapsed time and the estimate of the time left (indicatif
//! keeps both). The line's figures come from the step's record.

use super::record::{StepRecord, Term};
use super::{IterationRecord, RunStart, Sink};
use crate::net::Net;
use anyhow::Result;

pub struct Progress {
    bar: indicatif::ProgressBar,
    interactive: bool,
    /// The newest penalty value any synced critic update computed: a lazy penalty is absent
    /// from most logged updates.
    last_gp: Option<f64>,
}

impl Progress {
    /// A bar when `interactive`, else log lines; `start` gives its length and position.
    pub fn new(interactive: bool) -> Progress {
        let bar = match interactive {
            true => indicatif::ProgressBar::new(0),
            false => indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::hidden()),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{pos}/{len} {bar:25} {elapsed_precise} ETA {eta_precise} {msg}")
                .expect("static template"),
        );
        Progress { bar, interactive, last_gp: None }
    }
}

impl Sink for Progress {
    fn start(&mut self, run: &RunStart) -> Result<()> {
        self.bar.set_length(run.target_step);
        self.bar.set_position(run.step);
        // A resumed run starts at its checkpoint's step: that jump is not this run's speed.
        self.bar.reset_eta();
        Ok(())
    }

    fn step(&mut self, step: u64) {
        self.bar.set_position(step);
    }

    fn sync(&mut self, iterations: &[IterationRecord]) -> Result<()> {
        if let Some(gp) = iterations.iter().flat_map(|it| &it.critic).filter_map(|u| u.losses.get(Term::Penalty)).last() {
            self.last_gp = Some(gp);
        }
        Ok(())
    }

    fn log(&mut self, record: &StepRecord) -> Result<()> {
        let line = progress_line(record, self.last_gp);
        if self.interactive {
            self.bar.set_message(line);
        } else {
            let (pos, len) = (self.bar.position(), self.bar.length().unwrap_or(0));
            tracing::info!("{} {line}", progress_prefix(pos, len, self.bar.elapsed(), self.bar.eta()));
        }
        Ok(())
    }

    fn finish(&mut self, _end: &super::RunEnd) -> Result<()> {
        if self.interactive {
            self.bar.finish();
        }
        Ok(())
    }
}

/// The progress line's figures, with any unhealthy detector. A lazy penalty is absent from
/// most updates' records: the line shows the newest computed value, or nothing before the
/// first one (and when the run has no penalty).
pub fn progress_line(r: &StepRecord, last_gp: Option<f64>) -> String {
    let it = &r.iteration;
    let last_d = it.critic.last().expect("n_critic >= 1");
    let nan = f64::NAN;
    let mut health = String::new();
    for net in Net::ALL {
        let state = it.health[net].state;
        if state != crate::health::GradientHealth::Healthy {
            health.push_str(&format!(" {}-grad {}", net.prefix(), state.as_str()));
        }
    }
    let gp = last_d.losses.get(Term::Penalty).or(last_gp).map(|v| format!(" gp {v:.4}")).unwrap_or_default();
    let norm = |u: &super::UpdateRecord| u.clip.map_or(nan, |c| c.norm_before);
    format!(
        "d_loss {:.4} g_loss {:.4} W {:.4}{gp} |gd| {:.3} |gg| {:.3} {:.0} img/s{health}",
        last_d.losses.get(Term::Total).unwrap_or(nan),
        it.generator.losses.get(Term::Total).unwrap_or(nan),
        last_d.wasserstein.unwrap_or(nan),
        norm(last_d),
        norm(&it.generator),
        r.images_per_second
    )
}

/// `step 120/2000 (6.0%) elapsed 0:01:05 ETA 0:17:02`: what a batch log needs to tell how far
/// a run is and when it will end.
fn progress_prefix(step: u64, total: u64, elapsed: std::time::Duration, eta: std::time::Duration) -> String {
    let pct = if total == 0 { 100.0 } else { 100.0 * step as f64 / total as f64 };
    format!("step {step}/{total} ({pct:.1}%) elapsed {} ETA {}", clock(elapsed), clock(eta))
}

/// `h:mm:ss`, hours unbounded.
fn clock(d: std::time::Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{GradientHealth, HealthCounts};
    use crate::net::PerNet;
    use crate::sink::record::{ClipReport, HealthReport, Losses, UpdateRecord};
    use crate::timing::StageTimes;
    use std::time::Duration;

    fn update(net: Net, total: f64, gp: Option<f64>, norm: f64) -> UpdateRecord {
        let mut losses = Losses::default();
        losses.set(Term::Total, total);
        if let Some(g) = gp {
            losses.set(Term::Penalty, g);
        }
        UpdateRecord {
            net,
            skipped: false,
            losses,
            wasserstein: (net == Net::Critic).then_some(0.125),
            penalty_grad_norm: None,
            clip: Some(ClipReport { norm_before: norm, norm_after: norm, clipped: false }),
            layer_norms: vec![],
            lr: 1e-4,
            times: StageTimes::default(),
            allreduce_bytes: 0,
        }
    }

    fn record(gp: Option<f64>, g_health: GradientHealth, rate: f64) -> StepRecord {
        let h = |state| HealthReport { state, counts: HealthCounts::default() };
        StepRecord {
            iteration: IterationRecord {
                step: 1,
                critic_step: 1,
                skipped_updates: 0,
                lr_scale: 1.0,
                critic: vec![update(Net::Critic, 1.5, gp, 3.0)],
                generator: update(Net::Generator, -0.25, None, 0.5),
                health: PerNet { critic: h(GradientHealth::Healthy), generator: h(g_health) },
            },
            images: 1,
            images_per_second: rate,
            elapsed_seconds: 1.0,
            world_size: 1,
            eval: None,
        }
    }

    #[test]
    fn progress_prefix_and_line() {
        assert_eq!(progress_prefix(120, 2000, Duration::from_secs(65), Duration::from_secs(1022)), "step 120/2000 (6.0%) elapsed 0:01:05 ETA 0:17:02");
        assert_eq!(clock(Duration::from_secs(100 * 3600 + 61)), "100:01:01");
        let r = record(Some(0.5), GradientHealth::Vanishing, 99.6);
        assert_eq!(progress_line(&r, Some(9.0)), "d_loss 1.5000 g_loss -0.2500 W 0.1250 gp 0.5000 |gd| 3.000 |gg| 0.500 100 img/s g-grad vanishing");
    }

    /// Between the updates of a lazy penalty the line shows the newest computed value; before
    /// the first (or without a penalty) it shows no gp at all, never NaN.
    #[test]
    fn progress_line_without_a_penalty_term() {
        let r = record(None, GradientHealth::Healthy, 10.0);
        assert_eq!(progress_line(&r, Some(0.25)), "d_loss 1.5000 g_loss -0.2500 W 0.1250 gp 0.2500 |gd| 3.000 |gg| 0.500 10 img/s");
        assert_eq!(progress_line(&r, None), "d_loss 1.5000 g_loss -0.2500 W 0.1250 |gd| 3.000 |gg| 0.500 10 img/s");
        // The sink keeps the newest penalty value of every synced critic update.
        let mut p = Progress::new(false);
        p.sync(&[record(Some(0.75), GradientHealth::Healthy, 1.0).iteration, record(None, GradientHealth::Healthy, 1.0).iteration]).unwrap();
        assert_eq!(p.last_gp, Some(0.75));
    }
}
