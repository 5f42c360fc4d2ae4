//! What the run tells at a logging step: the scalar log's record (keys from `scalar_log`)
//! and rank 0's progress (a bar on a terminal, a log line per logged step elsewhere).

use super::{IterationStats, Trainer};
use crate::model::Net;
use crate::scalar_log::{self as log, number};
use serde_json::{json, Map, Value};

/// The scalar-log record of a logging step: the counters, the last critic update's and the
/// generator update's terms, norms and clipping, both detectors, and the run's figures.
pub fn log_record(t: &Trainer, it: &IterationStats, rate: f64, elapsed: f64) -> Map<String, Value> {
    let last_d = it.critic.last().expect("n_critic >= 1");
    let c = &t.counters;
    let mut m = Map::new();
    m.insert(log::STEP.into(), json!(c.step));
    m.insert(log::CRITIC_STEP.into(), json!(c.critic_step));
    m.insert(log::IMAGES.into(), json!(c.critic_step * t.cfg.data.batch_size as u64));
    for (net, s) in [(Net::Critic, last_d), (Net::Generator, &it.generator)] {
        for (k, v) in &s.scalars {
            m.insert(k.to_string(), json!(v));
        }
        if let Some(clip) = s.clip {
            m.insert(log::grad_norm(net), json!(clip.norm_before));
            m.insert(log::grad_norm_clipped(net), json!(clip.norm_after));
        }
        for (layer, v) in &s.layer_norms {
            m.insert(format!("{}{layer}", log::layer_norm_prefix(net)), json!(v));
        }
        let h = &t.nets[net].health;
        let counts = h.counts();
        m.insert(log::health(net), json!(h.state().as_str()));
        m.insert(log::vanishing_updates(net), json!(counts.vanishing));
        m.insert(log::exploding_updates(net), json!(counts.exploding));
        m.insert(log::nonfinite_updates(net), json!(counts.non_finite));
    }
    if let Some(clip) = it.generator.clip {
        m.insert(log::G_CLIPPED.into(), json!(clip.clipped));
    }
    let d_clips = it.critic.iter().filter(|s| s.clip.is_some_and(|c| c.clipped)).count();
    m.insert(log::D_CLIPPED_UPDATES.into(), json!(d_clips));
    m.insert(log::SKIPPED_UPDATES.into(), json!(c.skipped_updates));
    m.insert(log::IMAGES_PER_SECOND.into(), json!(rate));
    m.insert(log::ELAPSED_SECONDS.into(), json!(elapsed));
    m.insert(log::WORLD_SIZE.into(), json!(t.comm.world_size()));
    m.insert(log::LR_SCALE.into(), json!(c.lr_scale));
    m
}

/// The record of a rollback (an event, not a step).
pub fn rollback_record(t: &Trainer) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(log::STEP.into(), json!(t.counters.step));
    m.insert(log::EVENT.into(), json!(log::ROLLBACK));
    m.insert(log::LR_SCALE.into(), json!(t.counters.lr_scale));
    m
}

/// The progress line's figures from a record, with any unhealthy detector.
pub fn progress_line(r: &Map<String, Value>, last_gp: Option<f64>) -> String {
    let f = |k: &str| number(r, k).unwrap_or(f64::NAN);
    let mut health = String::new();
    for net in Net::ALL {
        if let Some(s) = r.get(&log::health(net)).and_then(|v| v.as_str()).filter(|s| *s != "healthy") {
            health.push_str(&format!(" {}-grad {s}", net.prefix()));
        }
    }
    // A lazy penalty is absent from most updates' records: show the newest computed value,
    // or nothing before the first one (and when the run has no penalty).
    let gp = number(r, log::D_GP.key).or(last_gp).map(|v| format!(" gp {v:.4}")).unwrap_or_default();
    format!(
        "d_loss {:.4} g_loss {:.4} W {:.4}{gp} |gd| {:.3} |gg| {:.3} {:.0} img/s{health}",
        f(log::D_LOSS.key),
        f(log::G_LOSS.key),
        f(log::WASSERSTEIN),
        f(&log::grad_norm(Net::Critic)),
        f(&log::grad_norm(Net::Generator)),
        f(log::IMAGES_PER_SECOND)
    )
}

/// Rank 0's progress: a bar on a terminal; elsewhere (a file, `sbatch` output) a log line per
/// logged step. indicatif keeps the elapsed time and the estimate of the time left for both.
pub struct Progress {
    bar: indicatif::ProgressBar,
    interactive: bool,
}

impl Progress {
    pub fn new(interactive: bool, total: u64, start: u64) -> Progress {
        let bar = match interactive {
            true => indicatif::ProgressBar::new(total),
            false => indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::hidden()),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{pos}/{len} {bar:25} {elapsed_precise} ETA {eta_precise} {msg}")
                .expect("static template"),
        );
        bar.set_position(start);
        // A resumed run starts at its checkpoint's step: that jump is not this run's speed.
        bar.reset_eta();
        Progress { bar, interactive }
    }

    pub fn set_step(&self, step: u64) {
        self.bar.set_position(step);
    }

    pub fn report(&self, line: String) {
        if self.interactive {
            self.bar.set_message(line);
        } else {
            let (pos, len) = (self.bar.position(), self.bar.length().unwrap_or(0));
            tracing::info!("{} {line}", progress_prefix(pos, len, self.bar.elapsed(), self.bar.eta()));
        }
    }

    pub fn finish(self) {
        if self.interactive {
            self.bar.finish();
        }
    }
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
    use std::time::Duration;

    #[test]
    fn progress_prefix_and_line() {
        assert_eq!(progress_prefix(120, 2000, Duration::from_secs(65), Duration::from_secs(1022)), "step 120/2000 (6.0%) elapsed 0:01:05 ETA 0:17:02");
        assert_eq!(clock(Duration::from_secs(100 * 3600 + 61)), "100:01:01");
        let r: Map<String, Value> = serde_json::from_str(
            r#"{"d_loss": 1.5, "g_loss": -0.25, "wasserstein": 0.125, "d_gp": 0.5, "d_grad_norm": 3.0, "g_grad_norm": 0.5,
               "images_per_second": 99.6, "d_health": "healthy", "g_health": "vanishing"}"#,
        )
        .unwrap();
        assert_eq!(progress_line(&r, Some(9.0)), "d_loss 1.5000 g_loss -0.2500 W 0.1250 gp 0.5000 |gd| 3.000 |gg| 0.500 100 img/s g-grad vanishing");
    }

    /// Between the updates of a lazy penalty the line shows the newest computed value; before
    /// the first (or without a penalty) it shows no gp at all, never NaN.
    #[test]
    fn progress_line_without_a_penalty_term() {
        let r: Map<String, Value> = serde_json::from_str(r#"{"d_loss": 1.0, "g_loss": 2.0, "wasserstein": 0.5, "d_grad_norm": 1.0, "g_grad_norm": 1.0, "images_per_second": 10}"#).unwrap();
        assert_eq!(progress_line(&r, Some(0.25)), "d_loss 1.0000 g_loss 2.0000 W 0.5000 gp 0.2500 |gd| 1.000 |gg| 1.000 10 img/s");
        assert_eq!(progress_line(&r, None), "d_loss 1.0000 g_loss 2.0000 W 0.5000 |gd| 1.000 |gg| 1.000 10 img/s");
    }
}
