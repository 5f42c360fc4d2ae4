//! Prometheus metrics of one training rank: the registry with every `gandist_*` family and the
//! process metrics, and their setters, which `monitor::Monitor` (the exporter as a reader of
//! the run, a `Sink`) calls at sync steps. Setters only store to atomics; the HTTP exporter
//! (`server`) reads the registry on its own thread, and `targets` writes the file through which
//! Prometheus finds every rank.
//!
//! Every series carries a `rank` label. Other labels: `net` (critic, generator), `term` (a loss
//! term), `layer` (a network layer, e.g. conv1), `phase` (a part of an update).

pub mod monitor;
pub mod server;
pub mod targets;

pub use crate::health::GradientHealth;
use crate::net::Net;
pub use monitor::Monitor;
use anyhow::{Context, Result};
use prometheus::{Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};
use std::collections::HashMap;

/// Port of local rank 0's exporter (`metrics.port_base`); why this one: see the constant.
pub use crate::config::DEFAULT_PORT_BASE;

/// Every state of the gradient-health detector, in gauge order.
pub const HEALTH_STATES: [GradientHealth; 4] =
    [GradientHealth::Vanishing, GradientHealth::Healthy, GradientHealth::Exploding, GradientHealth::NonFinite];

/// `gandist_gradient_health` encodes the detector's verdict (`crate::health`) as -1 vanishing,
/// 0 healthy, 1 exploding, 2 non-finite. The dashboard maps each value to its name (tested).
pub fn health_value(state: GradientHealth) -> f64 {
    match state {
        GradientHealth::Vanishing => -1.0,
        GradientHealth::Healthy => 0.0,
        GradientHealth::Exploding => 1.0,
        GradientHealth::NonFinite => 2.0,
    }
}

/// Upper bounds of the phase-duration histogram: 50 us to about 26 s, doubling.
fn phase_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(5e-5, 2.0, 20).expect("static bucket layout")
}

/// One rank's registry and metric families.
pub struct Metrics {
    registry: Registry,
    loss: GaugeVec,
    wasserstein: Gauge,
    gp_input_grad_norm: Gauge,
    layer_grad_norm: GaugeVec,
    grad_norm_before_clip: GaugeVec,
    grad_norm_after_clip: GaugeVec,
    clip_events: IntCounterVec,
    nonfinite_skipped: IntCounterVec,
    gradient_health: GaugeVec,
    learning_rate: GaugeVec,
    updates: IntCounterVec,
    images: IntCounter,
    phase_seconds: HistogramVec,
    allreduce_bytes: IntCounterVec,
    world_size: Gauge,
    step: Gauge,
    target_step: Gauge,
    build_info: GaugeVec,
    eval_fid: Gauge,
    eval_classes_covered: Gauge,
    eval_step: Gauge,
    eval_metric: GaugeVec,
    eval_score: GaugeVec,
}

/// The Inception-feature scores exported as `gandist_eval_score{metric=...}`.
pub const EVAL_SCORES: [&str; 3] = ["inception_fid", "kid", "kid_std"];

impl Metrics {
    /// A registry whose every series is labelled with `rank`, with the process collector.
    pub fn new(rank: usize) -> Result<Metrics> {
        let labels = HashMap::from([("rank".to_string(), rank.to_string())]);
        let registry = Registry::new_custom(None, Some(labels)).context("metrics registry")?;
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> Result<C> {
            r.register(Box::new(c.clone())).context("registering a metric family")?;
            Ok(c)
        }
        let gauge = |name: &str, help: &str| reg(&registry, Gauge::new(name, help)?);
        let gauges = |name: &str, help: &str, l: &[&str]| reg(&registry, GaugeVec::new(Opts::new(name, help), l)?);
        let counters = |name: &str, help: &str, l: &[&str]| reg(&registry, IntCounterVec::new(Opts::new(name, help), l)?);
        let m = Metrics {
            loss: gauges("gandist_loss", "Value of each loss term of the last update, before its weight; term=total is the loss that was differentiated.", &["net", "term"])?,
            wasserstein: gauge("gandist_wasserstein_estimate", "Critic's estimate of the Wasserstein distance, mean D(real) - mean D(fake), at the last critic update.")?,
            gp_input_grad_norm: gauge("gandist_gp_input_grad_norm", "Mean L2 norm of the critic's input gradient at the gradient-penalty interpolates, last critic update.")?,
            layer_grad_norm: gauges("gandist_layer_grad_norm", "L2 norm of one layer's all-reduced gradient before clipping, last update.", &["net", "layer"])?,
            grad_norm_before_clip: gauges("gandist_grad_norm_before_clip", "Global L2 norm of the all-reduced gradient before clipping, last update.", &["net"])?,
            grad_norm_after_clip: gauges("gandist_grad_norm_after_clip", "Global L2 norm of the gradient after clipping, last update.", &["net"])?,
            clip_events: counters("gandist_clip_events_total", "Updates whose gradient was rescaled by global-norm clipping.", &["net"])?,
            nonfinite_skipped: counters("gandist_nonfinite_skipped_updates_total", "Updates skipped on every rank because some rank saw a non-finite gradient.", &["net"])?,
            gradient_health: gauges("gandist_gradient_health", "Vanishing/exploding gradient detector state: -1 vanishing, 0 healthy, 1 exploding, 2 non-finite.", &["net"])?,
            learning_rate: gauges("gandist_learning_rate", "Learning rate of the last update.", &["net"])?,
            updates: counters("gandist_updates_total", "Optimizer updates applied (skipped ones excluded).", &["net"])?,
            images: reg(&registry, IntCounter::new("gandist_images_processed_total", "Real images this rank fed to the critic.")?)?,
            phase_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("gandist_step_phase_seconds", "Wall time of each phase of one update on this rank.").buckets(phase_buckets()),
                    &["net", "phase"],
                )?,
            )?,
            allreduce_bytes: counters("gandist_allreduce_bytes_total", "Bytes this rank handed to gradient all-reduces.", &["net"])?,
            world_size: gauge("gandist_world_size", "Number of ranks in the run.")?,
            step: gauge("gandist_step", "Generator updates completed (the training iteration).")?,
            target_step: gauge("gandist_target_step", "Generator updates the run is configured to reach (train.iterations): gandist_step / gandist_target_step is the fraction done.")?,
            build_info: gauges("gandist_build_info", "Constant 1, labelled with the gandist version, collective backend and device.", &["version", "backend", "device"])?,
            eval_fid: gauge("gandist_eval_fid", "Frechet distance of generated to real images at the last evaluation (NaN before one).")?,
            eval_classes_covered: gauge("gandist_eval_classes_covered", "Digit classes a classifier finds among generated images at the last evaluation (NaN before one).")?,
            eval_step: gauge("gandist_eval_step", "Generator step of the last evaluation (NaN before one).")?,
            eval_metric: gauges("gandist_eval_metric", "Every scalar metric of the last evaluation, by its name in metrics.jsonl.", &["metric"])?,
            eval_score: gauges("gandist_eval_score", "Inception-feature score of generated to real images at the last evaluation, by metric (inception_fid, kid, kid_std; NaN before one).", &["metric"])?,
            registry: registry.clone(),
        };
        for g in [&m.eval_fid, &m.eval_classes_covered, &m.eval_step] {
            g.set(f64::NAN);
        }
        for s in EVAL_SCORES {
            m.eval_score.with_label_values(&[s]).set(f64::NAN);
        }
        // Counters that may stay at zero still appear, so that rates and alerts have series.
        for net in Net::ALL {
            let n = [net.as_str()];
            for c in [&m.clip_events, &m.nonfinite_skipped, &m.updates, &m.allreduce_bytes] {
                c.with_label_values(&n);
            }
            m.gradient_health.with_label_values(&n).set(health_value(GradientHealth::Healthy));
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .context("registering the process collector")?;
        Ok(m)
    }

    /// The registry (a cheap shared handle) for the exporter.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// The text exposition of every family, as `/metrics` serves it.
    pub fn encode(&self) -> Result<String> {
        encode(&self.registry)
    }

    pub fn set_build_info(&self, version: &str, backend: &str, device: &str) {
        self.build_info.with_label_values(&[version, backend, device]).set(1.0);
    }

    pub fn set_world_size(&self, n: usize) {
        self.world_size.set(n as f64);
    }

    pub fn set_step(&self, step: u64) {
        self.step.set(step as f64);
    }

    pub fn set_target_step(&self, step: u64) {
        self.target_step.set(step as f64);
    }

    pub fn set_loss(&self, net: Net, term: &str, value: f64) {
        self.loss.with_label_values(&[net.as_str(), term]).set(value);
    }

    pub fn set_wasserstein(&self, value: f64) {
        self.wasserstein.set(value);
    }

    pub fn set_gp_input_grad_norm(&self, value: f64) {
        self.gp_input_grad_norm.set(value);
    }

    pub fn set_layer_grad_norm(&self, net: Net, layer: &str, value: f64) {
        self.layer_grad_norm.with_label_values(&[net.as_str(), layer]).set(value);
    }

    /// Global norms of an applied update; counts a clip event when clipping rescaled it.
    pub fn set_grad_norms(&self, net: Net, before: f64, after: f64, clipped: bool) {
        self.grad_norm_before_clip.with_label_values(&[net.as_str()]).set(before);
        self.grad_norm_after_clip.with_label_values(&[net.as_str()]).set(after);
        if clipped {
            self.clip_events.with_label_values(&[net.as_str()]).inc();
        }
    }

    /// Counts one update: applied, or skipped for a non-finite gradient.
    pub fn count_update(&self, net: Net, skipped: bool) {
        let c = if skipped { &self.nonfinite_skipped } else { &self.updates };
        c.with_label_values(&[net.as_str()]).inc();
    }

    pub fn add_images(&self, n: u64) {
        self.images.inc_by(n);
    }

    pub fn observe_phase(&self, net: Net, phase: &str, seconds: f64) {
        self.phase_seconds.with_label_values(&[net.as_str(), phase]).observe(seconds);
    }

    pub fn add_allreduce_bytes(&self, net: Net, bytes: u64) {
        self.allreduce_bytes.with_label_values(&[net.as_str()]).inc_by(bytes);
    }

    pub fn set_learning_rate(&self, net: Net, lr: f64) {
        self.learning_rate.with_label_values(&[net.as_str()]).set(lr);
    }

    /// For the gradient-health detector: its current verdict on one network.
    pub fn set_gradient_health(&self, net: Net, state: GradientHealth) {
        self.gradient_health.with_label_values(&[net.as_str()]).set(health_value(state));
    }

    /// For the evaluation: one Inception-feature score (a name of `EVAL_SCORES`).
    pub fn set_eval_score(&self, metric: &str, value: f64) {
        self.eval_score.with_label_values(&[metric]).set(value);
    }

    /// For the evaluation: scores computed at generator step `step` (None leaves one unchanged).
    pub fn set_eval_scores(&self, step: u64, fid: Option<f64>, classes_covered: Option<f64>) {
        self.eval_step.set(step as f64);
        if let Some(f) = fid {
            self.eval_fid.set(f);
        }
        if let Some(c) = classes_covered {
            self.eval_classes_covered.set(c);
        }
    }

    /// For the evaluation: its scalar metric `name` (each metric a series, so that a new one
    /// needs no new family).
    pub fn set_eval_metric(&self, name: &str, value: f64) {
        self.eval_metric.with_label_values(&[name]).set(value);
    }
}

/// Prometheus text format (version 0.0.4) of everything in `registry`.
pub fn encode(registry: &Registry) -> Result<String> {
    TextEncoder::new().encode_to_string(&registry.gather()).context("encoding metrics")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The value of the one sample of `family` whose labels include every `labels` pair.
    pub(crate) fn sample(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, ""));
            if name != family || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
                return None;
            }
            value.parse().ok()
        })
    }

    fn families(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (n, t) = l.split_once(' ').unwrap();
                (n.to_string(), t.to_string())
            })
            .collect()
    }

    /// Ports that a GPU cluster node commonly has taken, one per service (see DEFAULT_PORT_BASE).
    const TAKEN: &[(u16, &str)] = &[
        (3000, "Grafana"),
        (4317, "OTLP gRPC"),
        (4318, "OTLP HTTP"),
        (5555, "DCGM nv-hostengine"),
        (6006, "TensorBoard"),
        (6379, "Ray GCS"),
        (6817, "slurmctld"),
        (6818, "slurmd"),
        (6819, "slurmdbd"),
        (6820, "slurmrestd"),
        (8000, "HTTP alternative"),
        (8080, "HTTP alternative"),
        (8265, "Ray dashboard"),
        (8888, "Jupyter"),
        (9090, "Prometheus"),
        (9093, "Alertmanager"),
        (9100, "node_exporter"),
        (9400, "dcgm-exporter"),
        (9464, "OpenTelemetry Prometheus exporter"),
        (9835, "nvidia_gpu_exporter"),
        (10001, "Ray client"),
        (10250, "kubelet"),
        (29400, "torch elastic rendezvous"),
        (29500, "torchrun MASTER_PORT"),
    ];

    /// Every value the health gauge can take has a name and colour on the dashboard, and the
    /// metrics table of docs/monitoring.md lists it.
    #[test]
    fn dashboard_and_docs_name_every_gradient_health_state() {
        let codes: std::collections::BTreeSet<u8> = HEALTH_STATES.iter().map(|s| s.code()).collect();
        assert_eq!(codes.len(), HEALTH_STATES.len(), "HEALTH_STATES lists each state once");
        assert_eq!(codes.iter().copied().max(), Some(HEALTH_STATES.len() as u8 - 1), "HEALTH_STATES lists every state");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("monitoring/grafana/dashboards/gandist.json")).unwrap()).unwrap();
        let panels: Vec<&serde_json::Value> = dash["panels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["targets"].as_array().is_some_and(|t| t.iter().any(|t| t["expr"].as_str().unwrap_or("").contains("gandist_gradient_health"))))
            .collect();
        assert!(!panels.is_empty(), "no panel shows gandist_gradient_health");
        let docs = std::fs::read_to_string(root.join("docs/monitoring.md")).unwrap();
        let row = docs.lines().find(|l| l.starts_with("| `gandist_gradient_health`")).expect("docs list gandist_gradient_health");
        for p in panels {
            let mapped: serde_json::Map<String, serde_json::Value> = p["fieldConfig"]["defaults"]["mappings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["type"] == "value")
                .flat_map(|m| m["options"].as_object().unwrap().clone())
                .collect();
            assert_eq!(mapped.len(), HEALTH_STATES.len(), "{}: {mapped:?}", p["title"]);
            for state in HEALTH_STATES {
                let key = format!("{}", health_value(state) as i64);
                let m = mapped.get(&key).unwrap_or_else(|| panic!("{}: value {key} ({}) is not mapped", p["title"], state.as_str()));
                assert_eq!(m["text"], state.as_str(), "{}", p["title"]);
                assert!(m["color"].as_str().is_some_and(|c| !c.is_empty()));
            }
        }
        for state in HEALTH_STATES {
            let entry = format!("{} {}", health_value(state) as i64, state.as_str());
            assert!(row.replace('−', "-").contains(&entry), "docs/monitoring.md does not list {entry:?}: {row}");
        }
    }

    #[test]
    fn default_ports_of_64_local_ranks_avoid_common_services() {
        for local_rank in 0..64u16 {
            let port = DEFAULT_PORT_BASE + local_rank;
            assert!(!(9100..=9999).contains(&port), "{port} is in the exporters' allocation range");
            assert!(port < 32768, "{port} is in the ephemeral range");
            if let Some((_, what)) = TAKEN.iter().find(|(p, _)| *p == port) {
                panic!("local rank {local_rank} would listen on {port}, the port of {what}");
            }
        }
        assert_eq!(crate::config::MetricsConfig::default().port_base, DEFAULT_PORT_BASE);
    }

    #[test]
    fn families_have_prometheus_names_types_and_labels() {
        let m = Metrics::new(3).unwrap();
        m.set_build_info("0.1.0", "mpi", "cpu");
        m.set_world_size(4);
        m.set_step(7);
        m.set_target_step(2000);
        m.set_loss(Net::Critic, "gradient_penalty", 0.25);
        m.set_wasserstein(1.5);
        m.set_gp_input_grad_norm(0.9);
        m.set_layer_grad_norm(Net::Critic, "conv1", 2.0);
        m.set_grad_norms(Net::Generator, 10.0, 1.0, true);
        m.count_update(Net::Generator, false);
        m.count_update(Net::Critic, true);
        m.add_images(64);
        m.observe_phase(Net::Critic, "allreduce", 0.003);
        m.add_allreduce_bytes(Net::Critic, 4096);
        m.set_learning_rate(Net::Critic, 1e-4);
        m.set_gradient_health(Net::Generator, GradientHealth::Vanishing);
        let text = m.encode().unwrap();
        let fams = families(&text);
        let ty = |n: &str| fams.iter().find(|(f, _)| f == n).map(|(_, t)| t.as_str()).unwrap_or_else(|| panic!("no family {n} in:\n{text}"));
        for (name, kind) in [
            ("gandist_loss", "gauge"),
            ("gandist_wasserstein_estimate", "gauge"),
            ("gandist_gp_input_grad_norm", "gauge"),
            ("gandist_layer_grad_norm", "gauge"),
            ("gandist_grad_norm_before_clip", "gauge"),
            ("gandist_grad_norm_after_clip", "gauge"),
            ("gandist_clip_events_total", "counter"),
            ("gandist_nonfinite_skipped_updates_total", "counter"),
            ("gandist_gradient_health", "gauge"),
            ("gandist_learning_rate", "gauge"),
            ("gandist_updates_total", "counter"),
            ("gandist_images_processed_total", "counter"),
            ("gandist_step_phase_seconds", "histogram"),
            ("gandist_allreduce_bytes_total", "counter"),
            ("gandist_world_size", "gauge"),
            ("gandist_step", "gauge"),
            ("gandist_target_step", "gauge"),
            ("gandist_build_info", "gauge"),
            ("gandist_eval_fid", "gauge"),
            ("gandist_eval_classes_covered", "gauge"),
            ("gandist_eval_step", "gauge"),
            ("gandist_eval_score", "gauge"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_cpu_seconds_total", "counter"),
        ] {
            assert_eq!(ty(name), kind, "{name}");
        }
        for (name, _) in &fams {
            assert!(name.starts_with("gandist_") || name.starts_with("process_"), "{name}");
        }
        // Every sample line carries the rank label.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.contains("rank=\"3\""), "{l}");
        }
        let s = |f: &str, l: &[(&str, &str)]| sample(&text, f, l).unwrap_or_else(|| panic!("no {f} {l:?} in:\n{text}"));
        assert_eq!(s("gandist_loss", &[("net", "critic"), ("term", "gradient_penalty")]), 0.25);
        assert_eq!(s("gandist_layer_grad_norm", &[("net", "critic"), ("layer", "conv1")]), 2.0);
        assert_eq!(s("gandist_grad_norm_before_clip", &[("net", "generator")]), 10.0);
        assert_eq!(s("gandist_grad_norm_after_clip", &[("net", "generator")]), 1.0);
        assert_eq!(s("gandist_clip_events_total", &[("net", "generator")]), 1.0);
        assert_eq!(s("gandist_clip_events_total", &[("net", "critic")]), 0.0);
        assert_eq!(s("gandist_updates_total", &[("net", "generator")]), 1.0);
        assert_eq!(s("gandist_updates_total", &[("net", "critic")]), 0.0);
        assert_eq!(s("gandist_nonfinite_skipped_updates_total", &[("net", "critic")]), 1.0);
        assert_eq!(s("gandist_images_processed_total", &[]), 64.0);
        assert_eq!(s("gandist_step_phase_seconds_count", &[("net", "critic"), ("phase", "allreduce")]), 1.0);
        assert_eq!(s("gandist_step_phase_seconds_bucket", &[("phase", "allreduce"), ("le", "0.0032")]), 1.0);
        assert_eq!(s("gandist_step_phase_seconds_bucket", &[("phase", "allreduce"), ("le", "0.0016")]), 0.0);
        assert_eq!(s("gandist_allreduce_bytes_total", &[("net", "critic")]), 4096.0);
        assert_eq!(s("gandist_gradient_health", &[("net", "generator")]), -1.0);
        assert_eq!(s("gandist_gradient_health", &[("net", "critic")]), 0.0);
        assert_eq!(s("gandist_world_size", &[]), 4.0);
        assert_eq!(s("gandist_step", &[]), 7.0);
        assert_eq!(s("gandist_target_step", &[]), 2000.0);
        assert_eq!(s("gandist_build_info", &[("version", "0.1.0"), ("backend", "mpi"), ("device", "cpu")]), 1.0);
        assert!(s("gandist_eval_fid", &[]).is_nan(), "no evaluation yet");
        m.set_eval_scores(100, Some(12.5), None);
        m.set_eval_metric("kid", 0.25);
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, "gandist_eval_metric", &[("metric", "kid")]), Some(0.25));
        assert_eq!(sample(&text, "gandist_eval_fid", &[]), Some(12.5));
        assert!(sample(&text, "gandist_eval_classes_covered", &[]).unwrap().is_nan());
        assert_eq!(sample(&text, "gandist_eval_step", &[]), Some(100.0));
        assert!(sample(&text, "gandist_eval_score", &[("metric", "kid")]).unwrap().is_nan());
        m.set_eval_score("kid", 0.25);
        assert_eq!(sample(&m.encode().unwrap(), "gandist_eval_score", &[("metric", "kid")]), Some(0.25));
    }
}
