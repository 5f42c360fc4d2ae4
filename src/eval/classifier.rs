//! The evaluation classifier: a LeNet-style convolutional network trained by gandist itself,
//! on MNIST or on any labelled image set (`Labelled`: images n x c x h x w as bytes, labels),
//! saved as one safetensors file whose metadata carries a SHA-256 of the weights and the input
//! shape and class count it was built for.

use crate::data::mnist::{Mnist, Split, SIDE};
use crate::data::sampler::epoch_permutation;
use crate::seeds;
use super::frechet::Gaussian;
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// File name of the classifier inside the MNIST folder, where `eval` looks by default.
pub const DEFAULT_FILE: &str = "classifier.safetensors";
/// Written into the file's metadata; a file without it is not ours.
const FORMAT: &str = "gandist-mnist-classifier-v1";
/// Names of the stored feature statistics of the MNIST test set (float64), the FID reference.
const REF_MEAN: &str = "reference.mean";
const REF_COV: &str = "reference.cov";
const REF_N: &str = "reference.n";
/// Width of the penultimate layer, whose activations are the FID features.
pub const FEATURES: i64 = 128;
/// Images per forward pass when classifying many (bounds memory, not results).
const CHUNK: i64 = 1000;

/// What a classifier takes and tells apart: images of `channels` x `height` x `width`, and
/// `classes` labels. MNIST's (1, 28, 28, 10) is the default, also of files that predate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub channels: i64,
    pub height: i64,
    pub width: i64,
    pub classes: i64,
}

impl Shape {
    pub const MNIST: Shape = Shape { channels: 1, height: SIDE as i64, width: SIDE as i64, classes: 10 };

    /// The side after conv(same) -> pool 2 -> conv 5x5 valid -> pool 2, or None when too small.
    fn pooled(side: i64) -> Option<i64> {
        Some((side / 2 - 4) / 2).filter(|&p| side / 2 > 4 && p >= 1)
    }

    fn check(&self) -> Result<()> {
        if !(1..=4).contains(&self.channels) || Shape::pooled(self.height).is_none() || Shape::pooled(self.width).is_none() || self.classes < 2 {
            bail!("a classifier for {}x{}x{} images and {} classes cannot be built: expected 1-4 channels, sides of at least 12 and at least 2 classes", self.channels, self.height, self.width, self.classes);
        }
        Ok(())
    }

    fn meta(&self) -> String {
        format!("{},{},{},{}", self.channels, self.height, self.width, self.classes)
    }

    fn parse(s: &str) -> Option<Shape> {
        let v: Vec<i64> = s.split(',').map(|x| x.trim().parse().ok()).collect::<Option<_>>()?;
        match v[..] {
            [channels, height, width, classes] => Some(Shape { channels, height, width, classes }),
            _ => None,
        }
    }
}

/// A labelled image set: images (n, c, h, w) as bytes and labels (n,) in 0..classes.
pub struct Labelled {
    pub images: Tensor,
    pub labels: Tensor,
    pub classes: i64,
}

impl Labelled {
    /// Checks shapes and label range.
    pub fn new(images: Tensor, labels: Tensor, classes: i64) -> Result<Labelled> {
        let size = images.size();
        if size.len() != 4 || images.kind() != Kind::Uint8 {
            bail!("labelled images must be bytes shaped (n, channels, height, width), got {:?} {size:?}", images.kind());
        }
        let labels = labels.to_kind(Kind::Int64);
        if labels.size() != [size[0]] {
            bail!("{} images but labels of shape {:?}", size[0], labels.size());
        }
        if size[0] > 0 {
            let (lo, hi) = (crate::hostread::scalar(&labels.min()) as i64, crate::hostread::scalar(&labels.max()) as i64);
            if lo < 0 || hi >= classes {
                bail!("labels range over {lo}..={hi}: expected 0..{classes}");
            }
        }
        Ok(Labelled { images, labels, classes })
    }

    pub fn from_mnist(m: &Mnist) -> Result<Labelled> {
        let s = SIDE as i64;
        Labelled::new(Tensor::from_slice(&m.images).view([m.n as i64, 1, s, s]), Tensor::from_slice(&m.labels), 10)
    }

    pub fn len(&self) -> usize {
        self.images.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shape(&self) -> Shape {
        let s = self.images.size();
        Shape { channels: s[1], height: s[2], width: s[3], classes: self.classes }
    }

    /// The images as floats in [-1, 1], the generator's range.
    fn floats(&self) -> Tensor {
        self.images.to_kind(Kind::Float) / 127.5 - 1.0
    }
}

/// conv 5x5 (32, same) -> ReLU -> max-pool 2 -> conv 5x5 (64, valid) -> ReLU -> max-pool 2
/// -> linear (64 x 5 x 5 for 28 x 28 inputs) -> 128 -> ReLU (the features) -> linear 128 ->
/// classes (logits).
pub struct Classifier {
    pub vs: nn::VarStore,
    /// Feature statistics of the MNIST test set, computed after training and stored with the
    /// weights, so that an evaluation needs no pass over the test set.
    pub reference: Option<Gaussian>,
    pub shape: Shape,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// Settings of `gandist classifier train`.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    /// Adam's learning rate in the first epoch; it halves after each epoch.
    pub lr: f64,
    pub seed: u64,
    /// Train on the first N training images only (0 = all 60000); for tests.
    pub limit: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { epochs: 4, batch_size: 128, lr: 1e-3, seed: 0, limit: 0 }
    }
}

/// What training measured.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub test_accuracy: f64,
    pub seconds: f64,
    pub train_images: usize,
}

/// Per-image outputs of the classifier.
pub struct Outputs {
    /// (n, FEATURES) penultimate-layer activations.
    pub features: Tensor,
    /// (n, 10) class probabilities.
    pub probs: Tensor,
}

/// MNIST bytes (n, 28, 28) as floats in [-1, 1] shaped (n, 1, 28, 28), the generator's range.
pub fn images_to_tensor(bytes: &[u8], n: usize) -> Result<Tensor> {
    let per = SIDE * SIDE;
    if bytes.len() != n * per {
        bail!("{} bytes cannot hold {n} images of {SIDE}x{SIDE}", bytes.len());
    }
    Ok(Tensor::from_slice(bytes).to_kind(Kind::Float).view([n as i64, 1, SIDE as i64, SIDE as i64]) / 127.5 - 1.0)
}

impl Classifier {
    /// A freshly initialised MNIST network (seed libtorch's generator first for reproducibility).
    pub fn new(device: Device) -> Classifier {
        Classifier::for_shape(Shape::MNIST, device).expect("MNIST's shape is buildable")
    }

    /// A freshly initialised network for images and classes of `shape`.
    pub fn for_shape(shape: Shape, device: Device) -> Result<Classifier> {
        shape.check()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let same = nn::ConvConfig { padding: 2, ..Default::default() };
        let conv1 = nn::conv2d(&root / "conv1", shape.channels, 32, 5, same);
        let conv2 = nn::conv2d(&root / "conv2", 32, 64, 5, Default::default());
        let flat = 64 * Shape::pooled(shape.height).expect("checked") * Shape::pooled(shape.width).expect("checked");
        let fc1 = nn::linear(&root / "fc1", flat, FEATURES, Default::default());
        let fc2 = nn::linear(&root / "fc2", FEATURES, shape.classes, Default::default());
        Ok(Classifier { vs, reference: None, shape, conv1, conv2, fc1, fc2 })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Penultimate-layer features of images (n, c, h, w) of the classifier's shape, in [-1, 1].
    pub fn features(&self, x: &Tensor) -> Tensor {
        let x = self.conv1.forward(x).relu().max_pool2d_default(2);
        let x = self.conv2.forward(&x).relu().max_pool2d_default(2);
        self.fc1.forward(&x.flatten(1, -1)).relu()
    }

    pub fn logits(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.features(x))
    }

    /// Features and probabilities of many images, in chunks, without gradients; on the CPU.
    pub fn outputs(&self, images: &Tensor) -> Outputs {
        tch::no_grad(|| {
            let n = images.size()[0];
            let (mut feats, mut probs) = (Vec::new(), Vec::new());
            let mut start = 0;
            while start < n {
                let len = CHUNK.min(n - start);
                let x = images.narrow(0, start, len).to_device(self.device());
                let f = self.features(&x);
                probs.push(crate::hostread::to_cpu(&self.fc2.forward(&f).softmax(-1, Kind::Float)));
                feats.push(crate::hostread::to_cpu(&f));
                start += len;
            }
            Outputs { features: Tensor::cat(&feats, 0), probs: Tensor::cat(&probs, 0) }
        })
    }

    /// Fraction of `images` whose top class equals `labels`.
    pub fn accuracy(&self, images: &Tensor, labels: &Tensor) -> f64 {
        let pred = self.outputs(images).probs.argmax(-1, false);
        crate::hostread::scalar(&pred.eq_tensor(&crate::hostread::to_cpu(labels)).to_kind(Kind::Double).mean(Kind::Double))
    }

    /// Trains on MNIST's training split with Adam and reports accuracy on the test split.
    /// Data order comes from (seed, epoch); initial weights from the seed.
    pub fn train(data_dir: &Path, opts: &TrainOptions, device: Device) -> Result<(Classifier, TrainReport)> {
        let train = Labelled::from_mnist(&Mnist::load(data_dir, Split::Train)?)?;
        let test = Labelled::from_mnist(&Mnist::load(data_dir, Split::Test)?)?;
        Classifier::train_on(train, &test, opts, device)
    }

    /// Trains on any labelled image set (the first `opts.limit` images, 0 = all) with Adam,
    /// reports accuracy on `test` and stores the test set's feature statistics, the
    /// reference of the classifier FID. The network fits the images' shape and class count.
    pub fn train_on(train: Labelled, test: &Labelled, opts: &TrainOptions, device: Device) -> Result<(Classifier, TrainReport)> {
        if opts.epochs == 0 || opts.batch_size == 0 {
            bail!("--epochs and --batch must be at least 1");
        }
        let (shape, test_shape) = (train.shape(), test.shape());
        if shape != test_shape {
            bail!("training images and classes {shape:?} differ from the test set's {test_shape:?}");
        }
        if test.len() < 2 || train.is_empty() {
            bail!("{} training and {} test images: at least 1 and 2 needed", train.len(), test.len());
        }
        let n = if opts.limit > 0 { opts.limit.min(train.len()) } else { train.len() };
        let x = train.floats().narrow(0, 0, n as i64).to_device(device);
        let y = train.labels.narrow(0, 0, n as i64).to_device(device);
        tch::manual_seed((seeds::classifier::init_seed(opts.seed) >> 1) as i64);
        let net = Classifier::for_shape(shape, device)?;
        let mut opt = nn::Adam::default().build(&net.vs, opts.lr)?;
        let start = Instant::now();
        for epoch in 0..opts.epochs {
            // Halving the step each epoch: a constant 1e-3 for 3 epochs measured 98.8%.
            opt.set_lr(opts.lr * 0.5f64.powi(epoch as i32));
            let perm = epoch_permutation(n, seeds::classifier::order_seed(opts.seed, epoch as u64));
            for chunk in perm.chunks(opts.batch_size) {
                let idx = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device);
                let loss = net.logits(&x.index_select(0, &idx)).cross_entropy_for_logits(&y.index_select(0, &idx));
                opt.backward_step(&loss);
            }
            tracing::info!("epoch {}/{} done ({:.1} s)", epoch + 1, opts.epochs, start.elapsed().as_secs_f64());
        }
        let seconds = start.elapsed().as_secs_f64();
        let tx = test.floats();
        let test_accuracy = net.accuracy(&tx, &test.labels);
        let mut net = net;
        net.reference = Some(Gaussian::of_features(&net.outputs(&tx).features)?);
        Ok((net, TrainReport { test_accuracy, seconds, train_images: n }))
    }

    /// Writes the weights (and the test-set reference statistics, when present) atomically,
    /// with the format tag, a SHA-256 of all tensors and `info` (accuracy, seed, ...) in the
    /// safetensors metadata.
    pub fn save(&self, path: &Path, info: &[(&str, String)]) -> Result<()> {
        let mut tensors = Vec::new();
        for (name, t) in self.vs.variables() {
            tensors.push((name, tensor_bytes(&t)?));
        }
        if let Some(r) = &self.reference {
            tensors.push((REF_MEAN.into(), tensor_bytes(&r.mean)?));
            tensors.push((REF_COV.into(), tensor_bytes(&r.cov)?));
            tensors.push((REF_N.into(), tensor_bytes(&Tensor::from_slice(&[r.n as f64]))?));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut meta: HashMap<String, String> = info.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("shape".into(), self.shape.meta());
        meta.insert("tensors_sha256".into(), tensors_sha256(tensors.iter().map(|(n, (_, s, d))| (n.as_str(), s.as_slice(), d.as_slice()))));
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, (dt, s, d))| TensorView::new(*dt, s.clone(), d).map(|v| (n.clone(), v)))
            .collect::<Result<_, _>>()?;
        let bytes = safetensors::serialize(views, &Some(meta))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        crate::fsutil::write_atomic(path, &bytes)
    }

    /// Loads and checks a saved classifier: format tag, checksum, names, dtypes and shapes.
    pub fn load(path: &Path, device: Device) -> Result<Classifier> {
        let retrain = "retrain it with `gandist classifier train`";
        if !path.is_file() {
            bail!(
                "no MNIST classifier at {}: no such file; run `gandist classifier train --data DIR` first (it writes DIR/{DEFAULT_FILE}), or pass --classifier PATH",
                path.display()
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("classifier {} is not a valid safetensors file (truncated or corrupted): {retrain}", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            bail!("{} is not a gandist MNIST classifier (metadata format is {:?}, expected {FORMAT:?}): {retrain}", path.display(), meta.get("format"));
        }
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        let views: Vec<(String, TensorView)> = names.iter().map(|n| Ok((n.clone(), st.tensor(n)?))).collect::<Result<_>>()?;
        let sum = tensors_sha256(views.iter().map(|(n, v)| (n.as_str(), v.shape(), v.data())));
        if meta.get("tensors_sha256") != Some(&sum) {
            bail!(
                "classifier {}: checksum mismatch (SHA-256 of its tensors is {sum}, metadata says {:?}): the file is corrupted; {retrain}",
                path.display(),
                meta.get("tensors_sha256")
            );
        }
        let shape = match meta.get("shape") {
            None => Shape::MNIST,
            Some(s) => Shape::parse(s).with_context(|| format!("{}: metadata shape {s:?} is not \"channels,height,width,classes\": {retrain}", path.display()))?,
        };
        let mut net = Classifier::for_shape(shape, device).with_context(|| format!("{}: {retrain}", path.display()))?;
        let mut vars = net.vs.variables();
        let (mut weights, mut reference) = (0, HashMap::new());
        tch::no_grad(|| -> Result<()> {
            for (name, v) in &views {
                let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
                if [REF_MEAN, REF_COV, REF_N].contains(&name.as_str()) {
                    if v.dtype() != Dtype::F64 {
                        bail!("{}: tensor {name} has dtype {:?}, expected F64: {retrain}", path.display(), v.dtype());
                    }
                    let data: Vec<f64> = v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
                    reference.insert(name.as_str(), Tensor::from_slice(&data).view(shape.as_slice()));
                    continue;
                }
                let var = vars.get_mut(name).with_context(|| format!("{}: unexpected tensor {name}: {retrain}", path.display()))?;
                if v.dtype() != Dtype::F32 || var.size() != shape {
                    bail!("{}: tensor {name} is {:?} {shape:?}, expected F32 {:?}: {retrain}", path.display(), v.dtype(), var.size());
                }
                let data: Vec<f32> = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
                var.copy_(&Tensor::from_slice(&data).view(shape.as_slice()));
                weights += 1;
            }
            Ok(())
        })?;
        if weights != vars.len() {
            bail!("{}: {weights} weight tensors, expected {}: {retrain}", path.display(), vars.len());
        }
        if let (Some(mean), Some(cov), Some(n)) = (reference.remove(REF_MEAN), reference.remove(REF_COV), reference.remove(REF_N)) {
            if mean.size() != [FEATURES] || cov.size() != [FEATURES, FEATURES] {
                bail!("{}: reference statistics have shapes {:?} and {:?}, expected [{FEATURES}] and [{FEATURES}, {FEATURES}]: {retrain}", path.display(), mean.size(), cov.size());
            }
            net.reference = Some(Gaussian { mean, cov, n: crate::hostread::scalar(&n) as usize });
        }
        Ok(net)
    }
}

/// Dtype, shape and little-endian bytes of a float32 or float64 tensor.
fn tensor_bytes(t: &Tensor) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
    let shape = t.size().iter().map(|&d| d as usize).collect();
    Ok(match t.kind() {
        Kind::Double => (Dtype::F64, shape, crate::hostread::vec_f64(t)?.iter().flat_map(|x| x.to_le_bytes()).collect()),
        _ => (Dtype::F32, shape, crate::hostread::vec_f32(&t.to_kind(Kind::Float))?.iter().flat_map(|x| x.to_le_bytes()).collect()),
    })
}

/// The classifier file `eval` uses: `--classifier`, else `<MNIST folder>/classifier.safetensors`.
pub fn resolve_path(flag: Option<&Path>, data_dir: &Path) -> PathBuf {
    flag.map(Path::to_path_buf).unwrap_or_else(|| data_dir.join(DEFAULT_FILE))
}

/// SHA-256 over (name, shape, little-endian bytes) of each tensor, in the given order.
fn tensors_sha256<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (name, shape, data) in tensors {
        h.update(name.as_bytes());
        h.update([0u8]);
        for &d in shape {
            h.update((d as u64).to_le_bytes());
        }
        h.update(data);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_save_load_round_trip() {
        tch::manual_seed(0);
        let net = Classifier::new(Device::Cpu);
        let x = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        assert_eq!(net.features(&x).size(), vec![3, FEATURES]);
        assert_eq!(net.logits(&x).size(), vec![3, 10]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c.safetensors");
        net.save(&path, &[("test_accuracy", "0.5".into())]).unwrap();
        let back = Classifier::load(&path, Device::Cpu).unwrap();
        let d = (net.logits(&x) - back.logits(&x)).abs().max().double_value(&[]);
        assert_eq!(d, 0.0, "loaded weights must be bit-identical");
        assert!(back.reference.is_none());
        let mut net = net;
        let feats = Tensor::randn([20, FEATURES], (Kind::Float, Device::Cpu));
        net.reference = Some(Gaussian::of_features(&feats).unwrap());
        net.save(&path, &[]).unwrap();
        let r = Classifier::load(&path, Device::Cpu).unwrap().reference.unwrap();
        let want = net.reference.as_ref().unwrap();
        assert!(r.mean.equal(&want.mean) && r.cov.equal(&want.cov) && r.n == 20);
    }

    /// Any labelled image set: 3 x 16 x 16 images of 4 classes (the class is the colour of
    /// a noisy square) train a classifier of that shape, which saves, loads, and scores.
    #[test]
    fn trains_on_any_labelled_image_set() {
        tch::manual_seed(5);
        let make = |n: i64| {
            let labels = Tensor::randint(4, [n], (Kind::Int64, Device::Cpu));
            let colours = Tensor::from_slice(&[250.0f32, 20.0, 20.0, 20.0, 250.0, 20.0, 20.0, 20.0, 250.0, 250.0, 250.0, 20.0]).view([4, 3, 1, 1]);
            let base = colours.index_select(0, &labels).expand([n, 3, 16, 16], false);
            let noisy = (base + Tensor::randn([n, 3, 16, 16], (Kind::Float, Device::Cpu)) * 30.0).clamp(0.0, 255.0).to_kind(Kind::Uint8);
            Labelled::new(noisy, labels, 4).unwrap()
        };
        let (train, test) = (make(256), make(64));
        let opts = TrainOptions { epochs: 2, batch_size: 32, lr: 1e-3, seed: 0, limit: 0 };
        let (net, report) = Classifier::train_on(train, &test, &opts, Device::Cpu).unwrap();
        // Colours 230 levels apart under noise of 30: a working classifier is near 100%; 4
        // classes by chance give 25%.
        assert!(report.test_accuracy > 0.9, "{report:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("colours.safetensors");
        net.save(&path, &[]).unwrap();
        let back = Classifier::load(&path, Device::Cpu).unwrap();
        assert_eq!(back.shape, Shape { channels: 3, height: 16, width: 16, classes: 4 });
        let ev = crate::eval::Evaluator::new(back).unwrap();
        let r = ev.evaluate(&test.floats()).unwrap();
        assert_eq!((r.histogram.len(), r.classes_covered), (4, 4));
        assert!(r.fid < 1e-6, "the test set against its own statistics: {}", r.fid);
        let e = format!("{}", ev.evaluate(&Tensor::zeros([4, 1, 28, 28], (Kind::Float, Device::Cpu))).unwrap_err());
        assert!(e.contains("the classifier takes (n, 3, 16, 16)"), "{e}");
        assert!(Labelled::new(Tensor::zeros([2, 1, 16, 16], (Kind::Uint8, Device::Cpu)), Tensor::from_slice(&[0i64, 4]), 4).is_err());
    }

    #[test]
    fn missing_corrupt_and_foreign_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let e = format!("{:#}", Classifier::load(&path, Device::Cpu).err().unwrap());
        assert!(e.contains("gandist classifier train") && e.contains("c.safetensors"), "{e}");
        tch::manual_seed(0);
        Classifier::new(Device::Cpu).save(&path, &[]).unwrap();
        // Flip one bit in the last weight byte: the header still parses, the checksum does not.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let e = format!("{:#}", Classifier::load(&path, Device::Cpu).err().unwrap());
        assert!(e.contains("checksum mismatch") && e.contains("gandist classifier train"), "{e}");
        std::fs::write(&path, &bytes[..100]).unwrap();
        let e = format!("{:#}", Classifier::load(&path, Device::Cpu).err().unwrap());
        assert!(e.contains("not a valid safetensors file"), "{e}");
        let other = safetensors::serialize(Vec::<(String, TensorView)>::new(), &None).unwrap();
        std::fs::write(&path, other).unwrap();
        let e = format!("{:#}", Classifier::load(&path, Device::Cpu).err().unwrap());
        assert!(e.contains("not a gandist MNIST classifier"), "{e}");
    }
}
