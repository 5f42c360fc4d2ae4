//! The FID variant of Inception-v3 that pytorch-fid uses (`pytorch_fid.inception.InceptionV3`
//! with its default pool3 block): torchvision's Inception-v3 stem and blocks with
//! pytorch-fid's FIDInceptionA/C/E_1 (average pools that leave the zero padding out of the
//! count) and FIDInceptionE_2 (a max pool in the pool branch), batch norm in eval mode with
//! eps 0.001, and the input handling of its `forward`: a bilinear resize to 299 x 299
//! (align_corners = false), then 2x - 1. The weights come as they are from the file
//! pytorch-fid downloads, `pt_inception-2015-12-05-6726825d.pth` (see `torch_file`).

use super::torch_file;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Width of the pool3 features.
pub const FEATURES: i64 = 2048;
/// Side of the square every image is resized to inside the model.
pub const SIDE: i64 = 299;
/// The file name pytorch-fid downloads (and caches in torch hub's checkpoints folder).
pub const WEIGHTS_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";
/// SHA-256 of the published file (its name carries the first 8 hex digits).
pub const WEIGHTS_SHA256: &str = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2";
/// Where pytorch-fid downloads it from, for the error that says how to get it.
pub const WEIGHTS_URL: &str = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
/// The environment variable that names the weight file when no flag or config key does.
pub const WEIGHTS_ENV: &str = "GANDIST_INCEPTION_WEIGHTS";
/// Batch norm epsilon of torchvision's BasicConv2d.
const BN_EPS: f64 = 0.001;

/// Where the weights come from while the network is built.
trait Source {
    /// The tensor called `name`, of shape `shape`.
    fn take(&mut self, name: &str, shape: &[i64]) -> Tensor;
}

/// Tensors of a state dict, checked by name and shape; every problem is collected so that
/// one error lists them all.
struct FileSource {
    tensors: BTreeMap<String, Tensor>,
    problems: Vec<String>,
}

impl Source for FileSource {
    fn take(&mut self, name: &str, shape: &[i64]) -> Tensor {
        match self.tensors.remove(name) {
            Some(t) if t.size() == shape && t.is_floating_point() => t.to_kind(Kind::Float),
            Some(t) => {
                self.problems.push(format!("{name} is {:?} {:?}, expected Float {shape:?}", t.kind(), t.size()));
                Tensor::zeros(shape, (Kind::Float, Device::Cpu))
            }
            None => {
                self.problems.push(format!("{name} is missing"));
                Tensor::zeros(shape, (Kind::Float, Device::Cpu))
            }
        }
    }
}

/// Random weights that keep the features input-dependent through the network's depth:
/// He-normal convolutions and batch norm that leaves the scale near 1 (scales near 0.1
/// collapse every image to the same features). For speed measurements and tests.
struct RandomSource;

impl Source for RandomSource {
    fn take(&mut self, name: &str, shape: &[i64]) -> Tensor {
        let opts = (Kind::Float, Device::Cpu);
        if name.ends_with("conv.weight") {
            let fan_in: i64 = shape[1..].iter().product();
            Tensor::randn(shape, opts) * (2.0 / fan_in as f64).sqrt()
        } else if name.ends_with("bn.weight") {
            Tensor::rand(shape, opts) * 0.4 + 0.8
        } else if name.ends_with("bn.bias") || name.ends_with("bn.running_mean") {
            Tensor::randn(shape, opts) * 0.1
        } else {
            // bn.running_var
            Tensor::rand(shape, opts) * 0.4 + 0.8
        }
    }
}

/// torchvision's BasicConv2d: a convolution without bias, batch norm (eval), ReLU.
struct BasicConv {
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    bn_mean: Tensor,
    bn_var: Tensor,
    stride: [i64; 2],
    padding: [i64; 2],
}

impl BasicConv {
    fn new(src: &mut dyn Source, name: &str, cin: i64, cout: i64, kernel: [i64; 2], stride: i64, padding: [i64; 2]) -> BasicConv {
        let c = [cout];
        BasicConv {
            weight: src.take(&format!("{name}.conv.weight"), &[cout, cin, kernel[0], kernel[1]]),
            bn_weight: src.take(&format!("{name}.bn.weight"), &c),
            bn_bias: src.take(&format!("{name}.bn.bias"), &c),
            bn_mean: src.take(&format!("{name}.bn.running_mean"), &c),
            bn_var: src.take(&format!("{name}.bn.running_var"), &c),
            stride: [stride, stride],
            padding,
        }
    }

    /// A square kernel with the same padding on each side.
    fn square(src: &mut dyn Source, name: &str, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> BasicConv {
        BasicConv::new(src, name, cin, cout, [k, k], stride, [padding, padding])
    }

    /// (The ReLU is in place, as torchvision's `F.relu(x, inplace=True)`: the same values,
    /// one allocation less.)
    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, None::<Tensor>, self.stride, self.padding, [1, 1], 1)
            .batch_norm(Some(&self.bn_weight), Some(&self.bn_bias), Some(&self.bn_mean), Some(&self.bn_var), false, 0.1, BN_EPS, true)
            .relu_()
    }

    fn to(&mut self, device: Device) {
        for t in [&mut self.weight, &mut self.bn_weight, &mut self.bn_bias, &mut self.bn_mean, &mut self.bn_var] {
            *t = t.to_device(device);
        }
    }
}

/// 3 x 3 average pool, stride 1, padding 1, that divides by the unpadded count (TensorFlow's
/// behaviour, which pytorch-fid's FID blocks restore).
fn avg_pool_3x3(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>)
}

fn max_pool_3x3_s2(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// The blocks of the network, by torchvision's and pytorch-fid's class names.
enum Block {
    /// FIDInceptionA: 1x1; 1x1 -> 5x5; 1x1 -> 3x3 -> 3x3; avg pool (count_include_pad=False) -> 1x1.
    A([BasicConv; 7]),
    /// InceptionB (Mixed_6a): 3x3 stride 2; 1x1 -> 3x3 -> 3x3 stride 2; max pool.
    B([BasicConv; 4]),
    /// FIDInceptionC: 1x1; 1x1 -> 1x7 -> 7x1; 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7; avg pool -> 1x1.
    C([BasicConv; 10]),
    /// InceptionD (Mixed_7a): 1x1 -> 3x3 stride 2; 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2; max pool.
    D([BasicConv; 6]),
    /// FIDInceptionE_1 (avg pool, count_include_pad=False) and E_2 (max pool) in the pool branch.
    E { convs: [BasicConv; 9], max_pool: bool },
}

impl Block {
    fn a(src: &mut dyn Source, n: &str, cin: i64, pool: i64) -> Block {
        Block::A([
            BasicConv::square(src, &format!("{n}.branch1x1"), cin, 64, 1, 1, 0),
            BasicConv::square(src, &format!("{n}.branch5x5_1"), cin, 48, 1, 1, 0),
            BasicConv::square(src, &format!("{n}.branch5x5_2"), 48, 64, 5, 1, 2),
            BasicConv::square(src, &format!("{n}.branch3x3dbl_1"), cin, 64, 1, 1, 0),
            BasicConv::square(src, &format!("{n}.branch3x3dbl_2"), 64, 96, 3, 1, 1),
            BasicConv::square(src, &format!("{n}.branch3x3dbl_3"), 96, 96, 3, 1, 1),
            BasicConv::square(src, &format!("{n}.branch_pool"), cin, pool, 1, 1, 0),
        ])
    }

    fn b(src: &mut dyn Source, n: &str, cin: i64) -> Block {
        Block::B([
            BasicConv::square(src, &format!("{n}.branch3x3"), cin, 384, 3, 2, 0),
            BasicConv::square(src, &format!("{n}.branch3x3dbl_1"), cin, 64, 1, 1, 0),
            BasicConv::square(src, &format!("{n}.branch3x3dbl_2"), 64, 96, 3, 1, 1),
            BasicConv::square(src, &format!("{n}.branch3x3dbl_3"), 96, 96, 3, 2, 0),
        ])
    }

    fn c(src: &mut dyn Source, n: &str, cin: i64, c7: i64) -> Block {
        let (row, col) = ([1, 7], [7, 1]);
        let (prow, pcol) = ([0, 3], [3, 0]);
        Block::C([
            BasicConv::square(src, &format!("{n}.branch1x1"), cin, 192, 1, 1, 0),
            BasicConv::square(src, &format!("{n}.branch7x7_1"), cin, c7, 1, 1, 0),
            BasicConv::new(src, &format!("{n}.branch7x7_2"), c7, c7, row, 1, prow),
            BasicConv::new(src, &format!("{n}.branch7x7_3"), c7, 192, col, 1, pcol),
            BasicConv::square(src, &format!("{n}.branch7x7dbl_1"), cin, c7, 1, 1, 0),
            BasicConv::new(src, &format!("{n}.branch7x7dbl_2"), c7, c7, col, 1, pcol),
            BasicConv::new(src, &format!("{n}.branch7x7dbl_3"), c7, c7, row, 1, prow),
            BasicConv::new(src, &format!("{n}.branch7x7dbl_4"), c7, c7, col, 1, pcol),
            BasicConv::new(src, &format!("{n}.branch7x7dbl_5"), c7, 192, row, 1, prow),
            BasicConv::square(src, &format!("{n}.branch_pool"), cin, 192, 1, 1, 0),
        ])
    }

    fn d(src: &mut dyn Source, n: &str, cin: i64) -> Block {
        Block::D([
            BasicConv::square(src, &format!("{n}.branch3x3_1"), cin, 192, 1, 1, 0),
            BasicConv::square(src, &format!("{n}.branch3x3_2"), 192, 320, 3, 2, 0),
            BasicConv::square(src, &format!("{n}.branch7x7x3_1"), cin, 192, 1, 1, 0),
            BasicConv::new(src, &format!("{n}.branch7x7x3_2"), 192, 192, [1, 7], 1, [0, 3]),
            BasicConv::new(src, &format!("{n}.branch7x7x3_3"), 192, 192, [7, 1], 1, [3, 0]),
            BasicConv::square(src, &format!("{n}.branch7x7x3_4"), 192, 192, 3, 2, 0),
        ])
    }

    fn e(src: &mut dyn Source, n: &str, cin: i64, max_pool: bool) -> Block {
        Block::E {
            convs: [
                BasicConv::square(src, &format!("{n}.branch1x1"), cin, 320, 1, 1, 0),
                BasicConv::square(src, &format!("{n}.branch3x3_1"), cin, 384, 1, 1, 0),
                BasicConv::new(src, &format!("{n}.branch3x3_2a"), 384, 384, [1, 3], 1, [0, 1]),
                BasicConv::new(src, &format!("{n}.branch3x3_2b"), 384, 384, [3, 1], 1, [1, 0]),
                BasicConv::square(src, &format!("{n}.branch3x3dbl_1"), cin, 448, 1, 1, 0),
                BasicConv::square(src, &format!("{n}.branch3x3dbl_2"), 448, 384, 3, 1, 1),
                BasicConv::new(src, &format!("{n}.branch3x3dbl_3a"), 384, 384, [1, 3], 1, [0, 1]),
                BasicConv::new(src, &format!("{n}.branch3x3dbl_3b"), 384, 384, [3, 1], 1, [1, 0]),
                BasicConv::square(src, &format!("{n}.branch_pool"), cin, 192, 1, 1, 0),
            ],
            max_pool,
        }
    }

    fn convs_mut(&mut self) -> &mut [BasicConv] {
        match self {
            Block::A(c) => c,
            Block::B(c) => c,
            Block::C(c) => c,
            Block::D(c) => c,
            Block::E { convs, .. } => convs,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Block::A(c) => {
                let b1 = c[0].forward(x);
                let b5 = c[2].forward(&c[1].forward(x));
                let b3 = c[5].forward(&c[4].forward(&c[3].forward(x)));
                let bp = c[6].forward(&avg_pool_3x3(x));
                Tensor::cat(&[b1, b5, b3, bp], 1)
            }
            Block::B(c) => {
                let b3 = c[0].forward(x);
                let bd = c[3].forward(&c[2].forward(&c[1].forward(x)));
                Tensor::cat(&[b3, bd, max_pool_3x3_s2(x)], 1)
            }
            Block::C(c) => {
                let b1 = c[0].forward(x);
                let b7 = c[3].forward(&c[2].forward(&c[1].forward(x)));
                let bd = c[8].forward(&c[7].forward(&c[6].forward(&c[5].forward(&c[4].forward(x)))));
                let bp = c[9].forward(&avg_pool_3x3(x));
                Tensor::cat(&[b1, b7, bd, bp], 1)
            }
            Block::D(c) => {
                let b3 = c[1].forward(&c[0].forward(x));
                let b7 = c[5].forward(&c[4].forward(&c[3].forward(&c[2].forward(x))));
                Tensor::cat(&[b3, b7, max_pool_3x3_s2(x)], 1)
            }
            Block::E { convs: c, max_pool } => {
                let b1 = c[0].forward(x);
                let s = c[1].forward(x);
                let b3 = Tensor::cat(&[c[2].forward(&s), c[3].forward(&s)], 1);
                let d = c[5].forward(&c[4].forward(x));
                let bd = Tensor::cat(&[c[6].forward(&d), c[7].forward(&d)], 1);
                let pooled = match max_pool {
                    true => x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false),
                    false => avg_pool_3x3(x),
                };
                let bp = c[8].forward(&pooled);
                Tensor::cat(&[b1, b3, bd, bp], 1)
            }
        }
    }
}

/// pytorch-fid's Inception up to pool3.
pub struct FidInception {
    stem: [BasicConv; 5],
    blocks: Vec<Block>,
    device: Device,
    /// Whether the weights are the published file (by SHA-256), or others (random, re-saved).
    pub published: bool,
    /// SHA-256 of the weight file ("" for random weights): keys the reference cache.
    pub sha256: String,
    /// Where the weights came from, for reports.
    pub origin: String,
}

impl FidInception {
    fn build(src: &mut dyn Source) -> FidInception {
        let stem = [
            BasicConv::square(src, "Conv2d_1a_3x3", 3, 32, 3, 2, 0),
            BasicConv::square(src, "Conv2d_2a_3x3", 32, 32, 3, 1, 0),
            BasicConv::square(src, "Conv2d_2b_3x3", 32, 64, 3, 1, 1),
            BasicConv::square(src, "Conv2d_3b_1x1", 64, 80, 1, 1, 0),
            BasicConv::square(src, "Conv2d_4a_3x3", 80, 192, 3, 1, 0),
        ];
        let blocks = vec![
            Block::a(src, "Mixed_5b", 192, 32),
            Block::a(src, "Mixed_5c", 256, 64),
            Block::a(src, "Mixed_5d", 288, 64),
            Block::b(src, "Mixed_6a", 288),
            Block::c(src, "Mixed_6b", 768, 128),
            Block::c(src, "Mixed_6c", 768, 160),
            Block::c(src, "Mixed_6d", 768, 160),
            Block::c(src, "Mixed_6e", 768, 192),
            Block::d(src, "Mixed_7a", 768),
            Block::e(src, "Mixed_7b", 1280, false),
            Block::e(src, "Mixed_7c", 2048, true),
        ];
        FidInception { stem, blocks, device: Device::Cpu, published: false, sha256: String::new(), origin: String::new() }
    }

    /// Random weights from libtorch's generator (seed it first), for speed measurements and
    /// tests: the speed does not depend on the values.
    pub fn random(device: Device) -> FidInception {
        let mut net = tch::no_grad(|| FidInception::build(&mut RandomSource));
        net.origin = "random weights".into();
        net.to(device);
        net
    }

    /// Loads a `torch.save`d state dict of pytorch-fid's FID Inception (the published
    /// `pt_inception-2015-12-05-6726825d.pth`, or the same architecture's tensors saved
    /// by any torch version). Every missing, mis-shaped or unexpected tensor is named.
    pub fn load(path: &Path, device: Device) -> Result<FidInception> {
        if !path.is_file() {
            bail!(
                "no Inception weights at {}: download pytorch-fid's weight file once ({WEIGHTS_URL}, 91 MiB, SHA-256 {WEIGHTS_SHA256}) and pass its path with --inception-weights, ${WEIGHTS_ENV} or [eval] inception_weights",
                path.display()
            );
        }
        let mut net = FidInception::from_state_dict(torch_file::load_state_dict(path)?)
            .with_context(|| format!("{} is not pytorch-fid's FID Inception state dict", path.display()))?;
        net.sha256 = sha256_file(path)?;
        net.published = net.sha256 == WEIGHTS_SHA256;
        net.origin = format!("{}{}", path.display(), if net.published { " (the published pytorch-fid weights)" } else { "" });
        net.to(device);
        Ok(net)
    }

    /// The network from named tensors (on the CPU), refusing any set with a missing,
    /// mis-shaped or unexpected tensor, each named.
    pub fn from_state_dict(tensors: Vec<(String, Tensor)>) -> Result<FidInception> {
        let tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let mut src = FileSource { tensors, problems: Vec::new() };
        let net = tch::no_grad(|| FidInception::build(&mut src));
        // What the FID model leaves unused: the classifier head (1008 classes in the
        // published file) and batch-norm step counters. Anything else means another network.
        for (name, t) in std::mem::take(&mut src.tensors) {
            let unused = name.ends_with(".num_batches_tracked")
                || (name == "fc.weight" && t.size() == [1008, FEATURES])
                || (name == "fc.bias" && t.size() == [1008]);
            if !unused {
                src.problems.push(format!("{name} {:?} is not a tensor of pytorch-fid's FID Inception", t.size()));
            }
        }
        if !src.problems.is_empty() {
            let n = src.problems.len();
            let shown: Vec<&str> = src.problems.iter().take(12).map(String::as_str).collect();
            bail!("{n} problem(s): {}{}", shown.join("; "), if n > shown.len() { "; ..." } else { "" });
        }
        Ok(net)
    }

    fn to(&mut self, device: Device) {
        for c in self.stem.iter_mut() {
            c.to(device);
        }
        for b in self.blocks.iter_mut() {
            for c in b.convs_mut() {
                c.to(device);
            }
        }
        self.device = device;
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// pool3 features (n, 2048) of images (n, 3, h, w) in [0, 1], as pytorch-fid's
    /// `InceptionV3([3])` computes them: resize, scale to [-1, 1], the blocks, global
    /// average pool. Runs on the network's device without gradients; returns float32 there.
    pub fn features(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let x = images.to_device(self.device).to_kind(Kind::Float);
            let x = x.upsample_bilinear2d([SIDE, SIDE], false, None::<f64>, None::<f64>);
            let x = x * 2.0 - 1.0;
            let x = self.stem[2].forward(&self.stem[1].forward(&self.stem[0].forward(&x)));
            let x = max_pool_3x3_s2(&x);
            let x = self.stem[4].forward(&self.stem[3].forward(&x));
            let mut x = max_pool_3x3_s2(&x);
            for b in &self.blocks {
                x = b.forward(&x);
            }
            x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
        })
    }
}

/// The weight file: the flag, else $GANDIST_INCEPTION_WEIGHTS, else the config key, else
/// pytorch-fid's own download location in torch hub's cache, when a file is there.
pub fn resolve_weights(flag: Option<&Path>, config: &str) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(WEIGHTS_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if !config.is_empty() {
        return Ok(PathBuf::from(config));
    }
    if let Some(p) = torch_hub_copy().filter(|p| p.is_file()) {
        return Ok(p);
    }
    bail!(
        "no Inception weights given: download pytorch-fid's weight file once ({WEIGHTS_URL}) and pass it with --inception-weights PATH, ${WEIGHTS_ENV} or [eval] inception_weights (a copy that pytorch-fid downloaded into torch hub's cache, {}, is used when present)",
        torch_hub_copy().map(|p| p.display().to_string()).unwrap_or_else(|| format!("$TORCH_HOME/hub/checkpoints/{WEIGHTS_FILE}"))
    )
}

/// Where pytorch-fid's download lands: $TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting to
/// $XDG_CACHE_HOME/torch, then ~/.cache/torch (torch.hub's rule).
fn torch_hub_copy() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = var("TORCH_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("torch")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/torch")))?;
    Some(home.join("hub/checkpoints").join(WEIGHTS_FILE))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The architecture's parameter count, against torchvision's Inception-v3 (27,161,264
    /// parameters with AuxLogits and a 1000-class fc): the FID model drops AuxLogits
    /// (3,326,696 with its 1000-class fc) and its fc has 1008 classes (2,099,216 instead of
    /// 2,049,000), and the batch-norm running statistics here count as tensors too.
    #[test]
    fn shapes_and_parameter_count() {
        struct Count(i64, i64);
        impl Source for Count {
            fn take(&mut self, name: &str, shape: &[i64]) -> Tensor {
                let n: i64 = shape.iter().product();
                if name.contains("running_") {
                    self.1 += n;
                } else {
                    self.0 += n;
                }
                Tensor::zeros(shape, (Kind::Float, Device::Cpu))
            }
        }
        let mut c = Count(0, 0);
        FidInception::build(&mut c);
        // torchvision: 27,161,264 = body + AuxLogits (3,326,696) + fc (2,049,000).
        assert_eq!(c.0, 27_161_264 - 3_326_696 - 2_049_000);
        tch::manual_seed(0);
        let net = FidInception::random(Device::Cpu);
        let x = Tensor::rand([2, 3, 40, 30], (Kind::Float, Device::Cpu));
        let f = net.features(&x);
        assert_eq!(f.size(), vec![2, FEATURES]);
        // A state dict with a tensor missing, one mis-shaped and one foreign is refused by name.
        struct Collect(Vec<(String, Tensor)>);
        impl Source for Collect {
            fn take(&mut self, name: &str, shape: &[i64]) -> Tensor {
                let t = Tensor::ones(shape, (Kind::Float, Device::Cpu));
                self.0.push((name.to_string(), t.shallow_clone()));
                t
            }
        }
        let mut all = Collect(Vec::new());
        FidInception::build(&mut all);
        let mut sd = all.0;
        assert!(FidInception::from_state_dict(sd.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()).is_ok());
        sd.retain(|(n, _)| n != "Mixed_6b.branch7x7_2.conv.weight");
        sd.iter_mut().find(|(n, _)| n == "Mixed_7c.branch_pool.bn.running_var").unwrap().1 = Tensor::ones([3], (Kind::Float, Device::Cpu));
        sd.push(("AuxLogits.fc.weight".into(), Tensor::ones([1000, 768], (Kind::Float, Device::Cpu))));
        sd.push(("fc.weight".into(), Tensor::ones([1008, FEATURES], (Kind::Float, Device::Cpu))));
        sd.push(("Conv2d_1a_3x3.bn.num_batches_tracked".into(), Tensor::from(0i64)));
        let e = format!("{:#}", FidInception::from_state_dict(sd).err().unwrap());
        assert!(e.contains("3 problem(s)"), "{e}");
        assert!(e.contains("Mixed_6b.branch7x7_2.conv.weight is missing"), "{e}");
        assert!(e.contains("Mixed_7c.branch_pool.bn.running_var is Float [3], expected Float [192]"), "{e}");
        assert!(e.contains("AuxLogits.fc.weight [1000, 768] is not a tensor of pytorch-fid's FID Inception"), "{e}");
        // Different inputs, different features: random weights keep them input-dependent.
        let d = (f.get(0) - f.get(1)).abs().max().double_value(&[]);
        assert!(d > 1e-3 * f.abs().max().double_value(&[]), "features barely depend on the input: {d}");
    }
}
