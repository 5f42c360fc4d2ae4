//! The evaluation classifier: a LeNet-style convolutional network trained on MNIST by gandist
//! itself, saved as one safetensors file whose metadata carries a SHA-256 of the weights.

use crate::data::mnist::{Mnist, Split, SIDE};
use crate::data::sampler::{derive_seed, epoch_permutation};
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
/// Width of the penultimate layer, whose activations are the FID features.
pub const FEATURES: i64 = 128;
/// Images per forward pass when classifying many (bounds memory, not results).
const CHUNK: i64 = 1000;

/// conv 5x5 (32, same) -> ReLU -> max-pool 2 -> conv 5x5 (64, valid) -> ReLU -> max-pool 2
/// -> linear 1600 -> 128 -> ReLU (the features) -> linear 128 -> 10 (logits).
pub struct Classifier {
    pub vs: nn::VarStore,
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
    pub lr: f64,
    pub seed: u64,
    /// Train on the first N training images only (0 = all 60000); for tests.
    pub limit: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { epochs: 3, batch_size: 128, lr: 1e-3, seed: 0, limit: 0 }
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
    /// A freshly initialised network (seed libtorch's generator first for reproducibility).
    pub fn new(device: Device) -> Classifier {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let same = nn::ConvConfig { padding: 2, ..Default::default() };
        let conv1 = nn::conv2d(&root / "conv1", 1, 32, 5, same);
        let conv2 = nn::conv2d(&root / "conv2", 32, 64, 5, Default::default());
        let fc1 = nn::linear(&root / "fc1", 64 * 5 * 5, FEATURES, Default::default());
        let fc2 = nn::linear(&root / "fc2", FEATURES, 10, Default::default());
        Classifier { vs, conv1, conv2, fc1, fc2 }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Penultimate-layer features of images (n, 1, 28, 28) in [-1, 1].
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
                probs.push(self.fc2.forward(&f).softmax(-1, Kind::Float).to_device(Device::Cpu));
                feats.push(f.to_device(Device::Cpu));
                start += len;
            }
            Outputs { features: Tensor::cat(&feats, 0), probs: Tensor::cat(&probs, 0) }
        })
    }

    /// Fraction of `images` whose top class equals `labels`.
    pub fn accuracy(&self, images: &Tensor, labels: &Tensor) -> f64 {
        let pred = self.outputs(images).probs.argmax(-1, false);
        pred.eq_tensor(&labels.to_device(Device::Cpu)).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
    }

    /// Trains on MNIST's training split with Adam and reports accuracy on the test split.
    /// Data order comes from (seed, epoch); initial weights from the seed.
    pub fn train(data_dir: &Path, opts: &TrainOptions, device: Device) -> Result<(Classifier, TrainReport)> {
        if opts.epochs == 0 || opts.batch_size == 0 {
            bail!("--epochs and --batch must be at least 1");
        }
        let mut train = Mnist::load(data_dir, Split::Train)?;
        train.truncate(opts.limit);
        let test = Mnist::load(data_dir, Split::Test)?;
        let x = images_to_tensor(&train.images, train.n)?.to_device(device);
        let y = Tensor::from_slice(&train.labels).to_kind(Kind::Int64).to_device(device);
        tch::manual_seed((derive_seed(opts.seed, &[0]) >> 1) as i64);
        let net = Classifier::new(device);
        let mut opt = nn::Adam::default().build(&net.vs, opts.lr)?;
        let start = Instant::now();
        for epoch in 0..opts.epochs {
            let perm = epoch_permutation(train.n, derive_seed(opts.seed, &[1, epoch as u64]));
            for chunk in perm.chunks(opts.batch_size) {
                let idx = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device);
                let loss = net.logits(&x.index_select(0, &idx)).cross_entropy_for_logits(&y.index_select(0, &idx));
                opt.backward_step(&loss);
            }
            eprintln!("epoch {}/{} done ({:.1} s)", epoch + 1, opts.epochs, start.elapsed().as_secs_f64());
        }
        let seconds = start.elapsed().as_secs_f64();
        let tx = images_to_tensor(&test.images, test.n)?;
        let ty = Tensor::from_slice(&test.labels).to_kind(Kind::Int64);
        let test_accuracy = net.accuracy(&tx, &ty);
        Ok((net, TrainReport { test_accuracy, seconds, train_images: train.n }))
    }

    /// Writes the weights atomically, with the format tag, a SHA-256 of the weights and
    /// `info` (accuracy, seed, ...) in the safetensors metadata.
    pub fn save(&self, path: &Path, info: &[(&str, String)]) -> Result<()> {
        let tensors = self.named_f32()?;
        let mut meta: HashMap<String, String> = info.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("weights_sha256".into(), weights_sha256(tensors.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), f32_bytes(d)))));
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, s, d)| TensorView::new(Dtype::F32, s.clone(), f32_bytes(d)).map(|v| (n.clone(), v)))
            .collect::<Result<_, _>>()?;
        let bytes = safetensors::serialize(views, &Some(meta))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        crate::fsutil::write_atomic(path, &bytes)
    }

    /// Loads and checks a saved classifier: format tag, weights checksum, names and shapes.
    pub fn load(path: &Path, device: Device) -> Result<Classifier> {
        let retrain = "retrain it with `gandist classifier train`";
        if !path.is_file() {
            bail!(
                "no MNIST classifier at {}: run `gandist classifier train --data DIR` first (it writes DIR/{DEFAULT_FILE}), or pass --classifier PATH",
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
        let mut views = Vec::new();
        for n in &names {
            let v = st.tensor(n)?;
            if v.dtype() != Dtype::F32 {
                bail!("{}: tensor {n} has dtype {:?}, expected F32: {retrain}", path.display(), v.dtype());
            }
            views.push((n.clone(), v));
        }
        let sum = weights_sha256(views.iter().map(|(n, v)| (n.as_str(), v.shape(), v.data())));
        if meta.get("weights_sha256") != Some(&sum) {
            bail!(
                "classifier {}: checksum mismatch (weights SHA-256 {sum}, metadata says {:?}): the file is corrupted; {retrain}",
                path.display(),
                meta.get("weights_sha256")
            );
        }
        let net = Classifier::new(device);
        let mut vars = net.vs.variables();
        if vars.len() != views.len() {
            bail!("{}: {} tensors, expected {}: {retrain}", path.display(), views.len(), vars.len());
        }
        tch::no_grad(|| -> Result<()> {
            for (name, v) in &views {
                let var = vars.get_mut(name).with_context(|| format!("{}: unexpected tensor {name}: {retrain}", path.display()))?;
                let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
                if var.size() != shape {
                    bail!("{}: tensor {name} has shape {shape:?}, expected {:?}: {retrain}", path.display(), var.size());
                }
                let data: Vec<f32> = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                var.copy_(&Tensor::from_slice(&data).view(shape.as_slice()));
            }
            Ok(())
        })?;
        Ok(net)
    }

    /// Every variable as (name, shape, values), sorted by name.
    fn named_f32(&self) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
        let mut out = Vec::new();
        for (name, t) in self.vs.variables() {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let data: Vec<f32> = Vec::try_from(&t.to_device(Device::Cpu).contiguous().flatten(0, -1))?;
            out.push((name, shape, data));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// The classifier file `eval` uses: `--classifier`, else `<MNIST folder>/classifier.safetensors`.
pub fn resolve_path(flag: Option<&Path>, data_dir: &Path) -> PathBuf {
    flag.map(Path::to_path_buf).unwrap_or_else(|| data_dir.join(DEFAULT_FILE))
}

/// SHA-256 over (name, shape, little-endian bytes) of each tensor, in the given order.
fn weights_sha256<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>) -> String {
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

fn f32_bytes(v: &[f32]) -> &[u8] {
    // f32 has no padding and every bit pattern is a valid u8; safetensors is little-endian,
    // as is every host libtorch supports here.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
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
