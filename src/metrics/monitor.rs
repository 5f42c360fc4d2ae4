//! The Prometheus exporter as a reader of the run (`Sink`): it starts this rank's exporter and
//! the run's Prometheus targets file, and turns each synced update's record into metric values.

use super::server::Server;
use super::{targets, Metrics};
use crate::collectives::Collective;
use crate::config::MetricsConfig;
use crate::net::Net;
use crate::sink::record::{keys, UpdateRecord};
use crate::sink::{IterationRecord, RunEnd, RunStart, Sink, StepRecord};
use crate::timing::Stage;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Device;

/// The port of this rank's exporter: `port_base + local_rank`, or 0 (any free port) for all.
pub fn exporter_port(port_base: u16, local_rank: usize) -> Result<u16> {
    if port_base == 0 {
        return Ok(0);
    }
    match u16::try_from(port_base as usize + local_rank) {
        Ok(p) => Ok(p),
        Err(_) => bail!("metrics.port_base = {port_base} plus local rank {local_rank} is past port 65535: choose a lower metrics.port_base"),
    }
}

/// This rank's metrics and exporter, while the run lasts.
pub struct Monitor {
    pub metrics: Metrics,
    server: Server,
    /// Rank 0's targets file, emptied at a clean end.
    targets_file: Option<PathBuf>,
    /// Rank 0's file in `metrics.sd_dir`, removed at a clean end.
    shared_file: Option<PathBuf>,
    /// Real images this rank feeds each critic update (from the run's start).
    local_batch: u64,
}

impl Monitor {
    /// Starts the exporter (failing when its port is taken), then gathers every rank's address
    /// and node and has rank 0 write `<run_dir>/prometheus-targets.json` and, with
    /// `metrics.sd_dir`, the run's file there. A collective: every rank calls it, and only when
    /// `cfg.enabled`.
    pub fn start(cfg: &MetricsConfig, comm: &dyn Collective, device: Device, run_dir: &Path) -> Result<Monitor> {
        let rank = comm.rank();
        let port = exporter_port(cfg.port_base, comm.local_rank())?;
        let metrics = Metrics::new(rank)?;
        let server = Server::start(metrics.registry(), &cfg.host, port).with_context(|| {
            format!(
                "rank {rank}: metrics exporter (metrics.port_base = {} + local rank {}; metrics.port_base = 0 picks free ports)",
                cfg.port_base,
                comm.local_rank()
            )
        })?;
        metrics.set_build_info(env!("CARGO_PKG_VERSION"), comm.backend_name(), &crate::device::label(device));
        metrics.set_world_size(comm.world_size());
        let all = targets::gather(comm, &targets::advertised_host(&cfg.host), server.addr().port(), &targets::this_node())?;
        let (mut targets_file, mut shared_file) = (None, None);
        if rank == 0 {
            let path = run_dir.join(targets::FILE_NAME);
            let run = run_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let labels = targets::RunLabels::from_env(&run);
            let mut listed = path.display().to_string();
            if !cfg.sd_dir.is_empty() {
                let shared = targets::write_shared(Path::new(&cfg.sd_dir), &all, &labels)?;
                listed = format!("{listed} and {}", shared.display());
                shared_file = Some(shared);
            }
            // Last: once this file lists the ranks, every targets file is in place.
            targets::write(&path, &all, &labels)?;
            targets_file = Some(path);
            tracing::info!("metrics: ranks serve {}; Prometheus targets in {listed}", list(&all));
        }
        Ok(Monitor { metrics, server, targets_file, shared_file, local_batch: 0 })
    }

    /// The exporter's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

}

impl Sink for Monitor {
    fn start(&mut self, run: &RunStart) -> Result<()> {
        self.local_batch = run.local_batch;
        self.metrics.set_target_step(run.target_step);
        self.metrics.set_step(run.step);
        Ok(())
    }

    /// Every synced iteration: its critic updates, then its generator update, the detectors
    /// and the step.
    fn sync(&mut self, iterations: &[IterationRecord]) -> Result<()> {
        let m = &self.metrics;
        for it in iterations {
            for u in &it.critic {
                record_update(m, u);
                if !u.skipped {
                    m.add_images(self.local_batch);
                }
                if let Some(w) = u.wasserstein {
                    m.set_wasserstein(w);
                }
                if let Some(n) = u.penalty_grad_norm {
                    m.set_gp_input_grad_norm(n);
                }
            }
            record_update(m, &it.generator);
            for net in Net::ALL {
                m.set_gradient_health(net, it.health[net].state);
            }
            m.set_step(it.step);
        }
        Ok(())
    }

    /// An evaluation's metrics: every scalar as `gandist_eval_metric{metric}`, the classifier
    /// FID and coverage in their own gauges too (the dashboard's), and the Inception-feature
    /// scores as `gandist_eval_score{metric}`.
    fn log(&mut self, record: &StepRecord) -> Result<()> {
        if let Some(e) = &record.eval {
            self.metrics.set_eval_scores(e.step, e.scalar(keys::FID), e.scalar(keys::CLASSES_COVERED));
            for name in super::EVAL_SCORES {
                if let Some(v) = e.scalar(name) {
                    self.metrics.set_eval_score(name, v);
                }
            }
            for (name, value) in e.scalars() {
                self.metrics.set_eval_metric(name, value);
            }
        }
        Ok(())
    }

    /// At a clean end (finished or stopped on request): rank 0 empties the targets file and
    /// removes its file from `metrics.sd_dir`, so that alerting does not take the ended
    /// processes for ranks that died.
    fn finish(&mut self, _end: &RunEnd) -> Result<()> {
        if let Some(p) = self.targets_file.take() {
            targets::clear(&p)?;
        }
        if let Some(p) = self.shared_file.take() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {} from metrics.sd_dir", p.display()))?;
        }
        Ok(())
    }
}

/// One update's values into the metrics of its network.
fn record_update(m: &Metrics, u: &UpdateRecord) {
    let net = u.net;
    m.count_update(net, u.skipped);
    for (term, v) in u.losses.iter() {
        m.set_loss(net, term.label(), v);
    }
    if let Some(c) = u.clip {
        m.set_grad_norms(net, c.norm_before, c.norm_after, c.clipped);
    }
    for (layer, v) in &u.layer_norms {
        m.set_layer_grad_norm(net, layer, *v);
    }
    for stage in Stage::ALL {
        m.observe_phase(net, stage.name(), u.times.get(stage));
    }
    m.add_allreduce_bytes(net, u.allreduce_bytes);
    m.set_learning_rate(net, u.lr);
}

fn list(targets: &[targets::Target]) -> String {
    targets.iter().map(|t| crate::metrics::server::display_addr(&t.host, t.port)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_base_plus_local_rank_or_any() {
        assert_eq!(exporter_port(19400, 0).unwrap(), 19400);
        assert_eq!(exporter_port(19400, 3).unwrap(), 19403);
        assert_eq!(exporter_port(0, 3).unwrap(), 0);
        let e = exporter_port(65535, 1).unwrap_err().to_string();
        assert!(e.contains("metrics.port_base = 65535"), "{e}");
    }

    #[test]
    fn an_update_lands_in_its_networks_series() {
        use crate::sink::record::{ClipReport, Losses, Term};
        use crate::timing::StageTimes;
        let m = Metrics::new(0).unwrap();
        let mut losses = Losses::default();
        for (t, v) in [(Term::Total, 8.5), (Term::Adversarial, -1.5), (Term::Penalty, 1.0)] {
            losses.set(t, v);
        }
        let u = UpdateRecord {
            net: Net::Critic,
            skipped: false,
            losses,
            wasserstein: None,
            penalty_grad_norm: None,
            clip: Some(ClipReport { norm_before: 12.0, norm_after: 10.0, clipped: true }),
            layer_norms: vec![("conv1".into(), 3.0), ("fc".into(), 4.0)],
            lr: 2e-4,
            times: StageTimes([0.001, 0.002, 0.003, 0.004, 0.005]),
            allreduce_bytes: 400,
        };
        record_update(&m, &u);
        record_update(&m, &UpdateRecord { skipped: true, clip: None, layer_norms: vec![], losses: Losses::default(), ..u.clone() });
        let text = m.encode().unwrap();
        let v = |f: &str, l: &[(&str, &str)]| crate::metrics::tests::sample(&text, f, l).unwrap_or_else(|| panic!("{f} {l:?} in\n{text}"));
        let critic = ("net", "critic");
        assert_eq!(v("gandist_loss", &[critic, ("term", "total")]), 8.5);
        assert_eq!(v("gandist_loss", &[critic, ("term", "adversarial")]), -1.5);
        assert_eq!(v("gandist_loss", &[critic, ("term", "gradient_penalty")]), 1.0);
        assert!(crate::metrics::tests::sample(&text, "gandist_loss", &[("net", "generator")]).is_none());
        assert_eq!(v("gandist_grad_norm_before_clip", &[critic]), 12.0);
        assert_eq!(v("gandist_grad_norm_after_clip", &[critic]), 10.0);
        assert_eq!(v("gandist_clip_events_total", &[critic]), 1.0);
        assert_eq!(v("gandist_layer_grad_norm", &[critic, ("layer", "fc")]), 4.0);
        assert_eq!(v("gandist_updates_total", &[critic]), 1.0);
        assert_eq!(v("gandist_nonfinite_skipped_updates_total", &[critic]), 1.0);
        assert_eq!(v("gandist_allreduce_bytes_total", &[critic]), 800.0);
        assert_eq!(v("gandist_learning_rate", &[critic]), 2e-4);
        assert_eq!(v("gandist_step_phase_seconds_count", &[critic, ("phase", "optimizer")]), 2.0);
        assert!((v("gandist_step_phase_seconds_sum", &[critic, ("phase", "backward")]) - 0.006).abs() < 1e-12);
    }
}
