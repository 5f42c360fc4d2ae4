//! Sample quality. The quick one for MNIST: a classifier-feature Frechet distance (FID on the
//! penultimate layer of gandist's own MNIST classifier, not comparable with published
//! Inception FIDs), class histogram, classes covered, KL to uniform and confidence, and the
//! stacked-MNIST mode count of the mode-collapse literature. The ones papers report, for any
//! images: Inception FID as pytorch-fid computes it (`inception`, `features`, `frechet`,
//! `stats_file`, `image_folder`, `torch_file`), KID as torch-fidelity computes it (`kid`),
//! and precision/recall (`precision_recall`), with reference features cached by data set (`inception_metrics`).

pub mod classifier;
pub mod features;
pub mod frechet;
pub mod image_folder;
pub mod inception;
pub mod inception_metrics;
pub mod kid;
pub mod precision_recall;
pub mod stats_file;
pub mod torch_file;

use crate::data::mnist::SIDE;
use crate::model::Generator;
use anyhow::{bail, Context, Result};
use std::io::Read;
pub use classifier::Classifier;
use frechet::Gaussian;
use crate::sink::record::keys;
use crate::sink::{Metric, MetricValue};
use serde_json::{Map, Value};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A class counts as covered when it holds at least this share of the samples (a tenth of
/// the uniform share 1/10), and at least one sample.
pub const COVERAGE_SHARE: f64 = 0.01;
/// Generator forward passes are cut into chunks of this many samples.
const GEN_CHUNK: i64 = 500;

/// Digits per stacked-MNIST image (one per channel): 10^3 = 1000 modes.
pub const STACKED_CHANNELS: i64 = 3;

/// Quality of a set of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Images evaluated (for stacked MNIST: stacked images; the digit metrics use each channel).
    pub n: usize,
    /// Frechet distance of classifier features to the MNIST test set.
    pub fid: f64,
    /// Samples per predicted digit 0..=9.
    pub histogram: Vec<u64>,
    pub classes_covered: usize,
    /// KL(sample class distribution || uniform over 10), in nats.
    pub kl_uniform: f64,
    /// Mean top-class probability.
    pub confidence: f64,
    pub stacked: Option<StackedReport>,
}

/// The mode-collapse metric of VEEGAN and PacGAN on stacked MNIST.
#[derive(Debug, Clone, PartialEq)]
pub struct StackedReport {
    /// Distinct modes (digit triples, of 1000) with at least one sample.
    pub modes: usize,
    /// KL(mode distribution || uniform over 1000), in nats.
    pub kl_modes: f64,
}

/// Counts of each value in 0..k.
pub fn histogram(labels: &[i64], k: usize) -> Vec<u64> {
    let mut h = vec![0u64; k];
    for &l in labels {
        h[l as usize] += 1;
    }
    h
}

/// Bins holding at least `share` of the total and at least one sample.
pub fn covered(hist: &[u64], share: f64) -> usize {
    let total: u64 = hist.iter().sum();
    let need = ((share * total as f64).ceil() as u64).max(1);
    hist.iter().filter(|&&c| c >= need).count()
}

/// KL(p || uniform) in nats for the empirical distribution p of `hist` (0 log 0 = 0).
pub fn kl_to_uniform(hist: &[u64]) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let k = hist.len() as f64;
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            p * (p * k).ln()
        })
        .sum()
}

/// Stacked-MNIST modes: the digits of channels (0, 1, 2) read as a 3-digit number.
pub fn stacked_modes(channel_labels: &[i64]) -> Vec<i64> {
    channel_labels.chunks_exact(STACKED_CHANNELS as usize).map(|c| c[0] * 100 + c[1] * 10 + c[2]).collect()
}

/// Bytes (n, channels, 28, 28) as floats in [-1, 1] shaped (n, channels, 28, 28).
pub fn bytes_to_images(bytes: &[u8], n: usize, channels: usize) -> Result<Tensor> {
    let per = channels * SIDE * SIDE;
    if bytes.len() != n * per {
        bail!("{} bytes cannot hold {n} images of {channels}x{SIDE}x{SIDE}", bytes.len());
    }
    let s = SIDE as i64;
    Ok(Tensor::from_slice(bytes).to_kind(Kind::Float).view([n as i64, channels as i64, s, s]) / 127.5 - 1.0)
}

/// Reads an IDX file of samples, (n, 28, 28) or stacked (n, 3, 28, 28), raw or gzip; keeps
/// the first `limit` images when given. Returns the images in [-1, 1] and the file's count.
pub fn read_samples(path: &Path, limit: Option<usize>) -> Result<(Tensor, usize)> {
    let mut header = [0u8; 4];
    crate::data::idx::open_decompressed(path)?
        .read_exact(&mut header)
        .with_context(|| format!("{} is not a valid IDX file: shorter than its 4-byte magic", path.display()))?;
    let ndims = if header[3] == 4 { 4 } else { 3 };
    let idx = crate::data::idx::read_idx(path, ndims)?;
    let (n, channels) = if ndims == 4 { (idx.dims[0], idx.dims[1]) } else { (idx.dims[0], 1) };
    let (h, w) = (idx.dims[ndims - 2], idx.dims[ndims - 1]);
    if h != SIDE || w != SIDE {
        bail!("{}: images are {h}x{w}, expected {SIDE}x{SIDE} (MNIST-sized)", path.display());
    }
    if channels != 1 && channels != STACKED_CHANNELS as usize {
        bail!("{}: images have {channels} channels, expected 1 or {STACKED_CHANNELS} (stacked MNIST)", path.display());
    }
    let count = limit.map_or(n, |l| l.min(n));
    let bytes = &idx.data[..count * channels * SIDE * SIDE];
    Ok((bytes_to_images(bytes, count, channels)?, n))
}

/// Rounds images in [-1, 1] to the 256 byte levels, so that generated samples are measured
/// exactly as they would be after an export to IDX or PNG.
pub fn quantize(images: &Tensor) -> Tensor {
    ((images + 1.0) * 127.5).round().clamp(0.0, 255.0) / 127.5 - 1.0
}

/// `n` samples from a generator with noise from the stream (seed, EvalNoise) drawn on the CPU,
/// quantized to bytes.
pub fn generate(g: &Generator, n: usize, seed: u64) -> Tensor {
    crate::seeds::seed_torch(seed, crate::seeds::Stream::EvalNoise, 0);
    let device = g.params.flat.device();
    let z = Tensor::randn([n as i64, g.latent], (Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        let parts: Vec<Tensor> = z
            .split(GEN_CHUNK, 0)
            .iter()
            .map(|c| crate::hostread::to_cpu(&quantize(&g.forward(&crate::device::upload(c, device)))))
            .collect();
        Tensor::cat(&parts, 0)
    })
}

/// A classifier and the feature statistics of the MNIST test set it is compared against.
pub struct Evaluator {
    pub classifier: Classifier,
    pub reference: Gaussian,
}

impl Evaluator {
    /// Uses the test-set statistics that `gandist classifier train` stores with the weights.
    pub fn new(mut classifier: Classifier) -> Result<Evaluator> {
        let reference = classifier
            .reference
            .take()
            .context("the classifier holds no MNIST test-set statistics: retrain it with `gandist classifier train`")?;
        if reference.dim() != classifier::FEATURES {
            bail!("the classifier's test-set statistics have {} features, expected {}", reference.dim(), classifier::FEATURES);
        }
        Ok(Evaluator { classifier, reference })
    }

    /// Loads the classifier at `path` onto `device`; a missing file is an error that says how
    /// to make one.
    pub fn load(path: &Path, device: Device) -> Result<Evaluator> {
        Evaluator::new(Classifier::load(path, device)?)
            .with_context(|| format!("classifier {}", path.display()))
    }

    /// Like `load`, but `Ok(None)` when there is no file at `path` (a report that scores
    /// what it can); a file that is there must load.
    pub fn load_if_present(path: &Path, device: Device) -> Result<Option<Evaluator>> {
        match path.exists() {
            true => Evaluator::load(path, device).map(Some),
            false => Ok(None),
        }
    }

    /// Evaluates images (n, 1 or 3, 28, 28) in [-1, 1]. With 3 channels each channel is
    /// classified as a digit: the digit metrics and the FID use all 3n channel images, and
    /// the stacked-MNIST mode metrics use the triples. A classifier trained on another
    /// labelled set (`Classifier::train_on`) takes images of its own shape.
    pub fn evaluate(&self, images: &Tensor) -> Result<Report> {
        let shape = self.classifier.shape;
        if shape != classifier::Shape::MNIST {
            return self.evaluate_domain(images, shape);
        }
        let size = images.size();
        if size.len() != 4 || size[2] != SIDE as i64 || size[3] != SIDE as i64 {
            bail!("samples have shape {size:?}: expected (n, channels, {SIDE}, {SIDE})");
        }
        let (n, channels) = (size[0], size[1]);
        if channels != 1 && channels != STACKED_CHANNELS {
            bail!("samples have {channels} channels: expected 1 (MNIST) or {STACKED_CHANNELS} (stacked MNIST)");
        }
        if n < 2 {
            bail!("{n} sample(s): the Frechet distance needs at least 2");
        }
        let digits = images.reshape([n * channels, 1, SIDE as i64, SIDE as i64]);
        let out = self.classifier.outputs(&digits);
        let fid = frechet::frechet_distance(&Gaussian::of_features(&out.features)?, &self.reference)?;
        let (top, labels) = out.probs.max_dim(-1, false);
        let labels: Vec<i64> = crate::hostread::vec_i64(&labels)?;
        let hist = histogram(&labels, 10);
        let stacked = (channels == STACKED_CHANNELS).then(|| {
            let modes = histogram(&stacked_modes(&labels), 1000);
            StackedReport { modes: covered(&modes, 0.0), kl_modes: kl_to_uniform(&modes) }
        });
        Ok(Report {
            n: n as usize,
            fid,
            classes_covered: covered(&hist, COVERAGE_SHARE),
            kl_uniform: kl_to_uniform(&hist),
            confidence: crate::hostread::scalar(&top.mean(Kind::Double)),
            histogram: hist,
            stacked,
        })
    }

    /// Images of a domain classifier's shape: the same scores over its classes (a class is
    /// covered with a tenth of the uniform share, as for MNIST's 10).
    fn evaluate_domain(&self, images: &Tensor, shape: classifier::Shape) -> Result<Report> {
        let size = images.size();
        let want = [shape.channels, shape.height, shape.width];
        if size.len() != 4 || size[1..] != want {
            bail!("samples have shape {size:?}: the classifier takes (n, {}, {}, {})", want[0], want[1], want[2]);
        }
        if size[0] < 2 {
            bail!("{} sample(s): the Frechet distance needs at least 2", size[0]);
        }
        let out = self.classifier.outputs(images);
        let fid = frechet::frechet_distance(&Gaussian::of_features(&out.features)?, &self.reference)?;
        let (top, labels) = out.probs.max_dim(-1, false);
        let hist = histogram(&crate::hostread::vec_i64(&labels)?, shape.classes as usize);
        Ok(Report {
            n: size[0] as usize,
            fid,
            classes_covered: covered(&hist, 0.1 / shape.classes as f64),
            kl_uniform: kl_to_uniform(&hist),
            confidence: crate::hostread::scalar(&top.mean(Kind::Double)),
            histogram: hist,
            stacked: None,
        })
    }
}

/// What a run evaluates with during training, per `[eval] metric`.
pub enum RunEvaluator {
    Classifier(Evaluator),
    Inception(inception_metrics::InceptionEvaluator),
}

impl RunEvaluator {
    /// The classifier, or the Inception network and the training images' reference features
    /// (computed once per data set and weight file, then read from the cache).
    pub fn load(cfg: &crate::config::EvalConfig, data_dir: &Path, device: Device) -> Result<RunEvaluator> {
        use inception_metrics::{InceptionEvaluator, Metric};
        let metric = match cfg.metric.as_str() {
            "classifier-fid" => {
                let path = classifier::resolve_path((!cfg.classifier.is_empty()).then(|| Path::new(&cfg.classifier)), data_dir);
                return Ok(RunEvaluator::Classifier(Evaluator::load(&path, device).context("eval.metric = \"classifier-fid\" needs the MNIST classifier")?));
            }
            "inception-fid" => Metric::InceptionFid,
            "kid" => Metric::Kid,
            other => bail!("eval.metric = {other:?}: expected one of {:?}", crate::config::EVAL_METRICS),
        };
        let weights = inception::resolve_weights(None, &cfg.inception_weights)
            .with_context(|| format!("eval.metric = {:?} needs pytorch-fid's Inception weights", cfg.metric))?;
        let net = inception::FidInception::load(&weights, device)?;
        let reference = inception_metrics::mnist_reference(&net, data_dir, cfg.reference_n, features::BATCH)?;
        tracing::info!("eval: {} against {}", metric.name(), reference.label);
        Ok(RunEvaluator::Inception(InceptionEvaluator::new(net, reference, vec![metric], features::BATCH)?))
    }

    /// Scores of generated images in [-1, 1], as named metrics under their metrics.jsonl keys.
    pub fn evaluate(&self, images: &Tensor) -> Result<Vec<Metric>> {
        match self {
            RunEvaluator::Classifier(e) => Ok(e.evaluate(images)?.to_metrics()),
            RunEvaluator::Inception(e) => Ok(metrics_of_json(&e.evaluate(images)?)),
        }
    }
}

/// Flat key/value pairs as named metrics: whole numbers as counts, other numbers as reals,
/// arrays of whole numbers as histograms (anything else has no place among metrics).
pub fn metrics_of_json(m: &Map<String, Value>) -> Vec<Metric> {
    m.iter()
        .filter_map(|(name, v)| {
            let value = match v {
                Value::Number(n) => n.as_u64().map(MetricValue::Count).or_else(|| n.as_f64().map(MetricValue::Real))?,
                Value::Array(a) => MetricValue::Counts(a.iter().map(Value::as_u64).collect::<Option<_>>()?),
                _ => return None,
            };
            Some(Metric { name: name.clone(), value })
        })
        .collect()
}

impl Report {
    /// The report as named metrics, under their metrics.jsonl keys: what an evaluation during
    /// training hands every reader (`sink::EvalReport`).
    pub fn to_metrics(&self) -> Vec<Metric> {
        let metric = |name: &str, value| Metric { name: name.into(), value };
        let mut m = vec![
            metric("eval_n", MetricValue::Count(self.n as u64)),
            metric(keys::FID, MetricValue::Real(self.fid)),
            metric(keys::CLASSES_COVERED, MetricValue::Count(self.classes_covered as u64)),
            metric("kl_uniform", MetricValue::Real(self.kl_uniform)),
            metric("confidence", MetricValue::Real(self.confidence)),
            metric("class_histogram", MetricValue::Counts(self.histogram.clone())),
        ];
        if let Some(s) = &self.stacked {
            m.push(metric("modes_covered", MetricValue::Count(s.modes as u64)));
            m.push(metric("kl_modes", MetricValue::Real(s.kl_modes)));
        }
        m
    }

    /// The metrics as one JSON object (the last line of `gandist eval`).
    pub fn to_json(&self) -> Map<String, Value> {
        self.to_metrics().into_iter().map(|m| (m.name, serde_json::to_value(m.value).expect("a metric serialises"))).collect()
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let total: u64 = self.histogram.iter().sum::<u64>().max(1);
        let mut s = String::new();
        s.push_str(&format!("samples              {}\n", self.n));
        s.push_str(&format!("classifier FID       {:.4}\n", self.fid));
        let k = self.histogram.len();
        s.push_str(&format!("classes covered      {} of {k} (>= {}% of samples each)\n", self.classes_covered, 10.0 / k as f64));
        s.push_str(&format!("KL(classes||uniform) {:.4} nats\n", self.kl_uniform));
        s.push_str(&format!("mean confidence      {:.4}\n", self.confidence));
        if let Some(st) = &self.stacked {
            s.push_str(&format!("stacked modes        {} of 1000\n", st.modes));
            s.push_str(&format!("KL(modes||uniform)   {:.4} nats\n", st.kl_modes));
        }
        s.push_str("digit  count   share\n");
        for (d, c) in self.histogram.iter().enumerate() {
            s.push_str(&format!("{d:>5}  {c:>5}  {:>5.1}%\n", 100.0 * *c as f64 / total as f64));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_rule_and_kl() {
        // 1000 samples: the threshold is 10. Digit 3 has 9 (below), digit 4 has 10 (counts).
        let mut h = vec![0u64; 10];
        h[0] = 981;
        h[3] = 9;
        h[4] = 10;
        assert_eq!(covered(&h, COVERAGE_SHARE), 2);
        assert_eq!(covered(&h, 0.0), 3);
        // One class: KL = ln 10; uniform: 0; two equal classes: ln 5.
        let one = histogram(&[7; 50], 10);
        assert_eq!(covered(&one, COVERAGE_SHARE), 1);
        assert!((kl_to_uniform(&one) - 10f64.ln()).abs() < 1e-12);
        assert!(kl_to_uniform(&[5; 10]).abs() < 1e-12);
        assert!((kl_to_uniform(&[0, 3, 3, 0, 0, 0, 0, 0, 0, 0]) - 5f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn stacked_modes_read_channels_as_digits() {
        assert_eq!(stacked_modes(&[1, 2, 3, 0, 0, 9, 9, 9, 9]), vec![123, 9, 999]);
        let modes = histogram(&stacked_modes(&[1, 2, 3, 1, 2, 3]), 1000);
        assert_eq!(covered(&modes, 0.0), 1);
        assert!((kl_to_uniform(&modes) - 1000f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn evaluator_needs_stored_reference_statistics() {
        tch::manual_seed(0);
        let e = Evaluator::new(Classifier::new(Device::Cpu)).err().unwrap();
        assert!(format!("{e}").contains("no MNIST test-set statistics"), "{e}");
        // With statistics, wrong inputs are named.
        let mut c = Classifier::new(Device::Cpu);
        c.reference = Some(Gaussian::of_features(&Tensor::randn([8, classifier::FEATURES], (Kind::Float, Device::Cpu))).unwrap());
        let ev = Evaluator::new(c).unwrap();
        let e = ev.evaluate(&Tensor::zeros([4, 2, 28, 28], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(format!("{e}").contains("2 channels"), "{e}");
        let e = ev.evaluate(&Tensor::zeros([4, 1, 32, 32], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(format!("{e}").contains("expected (n, channels, 28, 28)"), "{e}");
        let r = ev.evaluate(&Tensor::zeros([4, 3, 28, 28], (Kind::Float, Device::Cpu))).unwrap();
        assert_eq!(r.histogram.iter().sum::<u64>(), 12);
        assert_eq!(r.stacked.as_ref().map(|s| s.modes), Some(1), "identical triples are one mode");
    }

    #[test]
    fn quantize_matches_byte_round_trip() {
        let x = Tensor::from_slice(&[-1.0f32, -0.3, 0.0, 0.5, 1.0, 1.2]);
        let bytes = crate::model::to_bytes(&x);
        let want = Tensor::from_slice(&bytes).to_kind(Kind::Float) / 127.5 - 1.0;
        assert_eq!((quantize(&x) - want).abs().max().double_value(&[]), 0.0);
        assert!(format!("{}", bytes_to_images(&bytes, 1, 1).unwrap_err()).contains("cannot hold 1 images"));
    }
}
